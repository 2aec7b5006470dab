//! Behaviour of the overlay backend beyond the shared suite: labels, options, probes,
//! removal modes, deep chains, renames, ownership and crash leftovers.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{layer, loop_mounted, open, privileged, snapshot_entries, MountGuard};
use snapshot_core::{
    labels, Cleaner, CommitOptions, CreateOptions, ErrorKind, Info, Kind, Snapshotter,
};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter, UPPERDIR_LABEL, VOLATILE_LABEL};

fn cfg() -> OverlayConfig {
    OverlayConfig::default()
}

#[test]
fn upperdir_label_is_synthesised_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(
        dir.path(),
        OverlayConfig {
            upperdir_label: true,
            ..cfg()
        },
    );
    sn.prepare("a", "", &CreateOptions::with_labels(labels([("x", "1")])))
        .unwrap();
    let upper = sn.upper_dir("a").unwrap();
    let id = sn.store().snapshot("a").unwrap().id;
    assert!(
        upper.ends_with(format!("snapshots/{id}/fs")),
        "{}",
        upper.display()
    );
    let st = sn.stat("a").unwrap();
    assert_eq!(
        st.labels.get(UPPERDIR_LABEL).map(String::as_str),
        upper.to_str()
    );
    assert_eq!(st.labels.get("x").map(String::as_str), Some("1"));

    sn.commit("c", "a", &CommitOptions::with_labels(labels([("y", "2")])))
        .unwrap();
    let st = sn.stat("c").unwrap();
    assert_eq!(
        st.labels.get(UPPERDIR_LABEL).map(String::as_str),
        upper.to_str(),
        "commit keeps the id"
    );

    let mut seen = Vec::new();
    sn.walk(&[], &mut |i: &Info| {
        seen.push((i.name.clone(), i.labels.get(UPPERDIR_LABEL).cloned()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![("c".to_string(), Some(upper.to_string_lossy().into_owned()))]
    );

    // Sending the label back in an update must not store it.
    let mut info = st.clone();
    info.labels.insert("z".into(), "3".into());
    let new = sn.update(&info, &[]).unwrap();
    assert_eq!(
        new.labels.get(UPPERDIR_LABEL).map(String::as_str),
        upper.to_str()
    );
    assert_eq!(new.labels.get("z").map(String::as_str), Some("3"));
    sn.close().unwrap();

    let sn = open(dir.path(), cfg());
    let st = sn.stat("c").unwrap();
    assert_eq!(
        st.labels,
        labels([("y", "2"), ("z", "3")]),
        "nothing synthesised was stored"
    );
}

#[test]
fn d_type_refusal_through_the_probe_seam() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let err = OverlaySnapshotter::open_with_probe(&root, cfg(), |_| Ok(false)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let fs = snapshot_overlay::probe::filesystem_name(&root);
    let msg = err.to_string();
    assert!(
        msg.contains(&fs) && msg.contains("d_type") && msg.contains("ftype=1"),
        "{msg}"
    );
    assert!(
        msg.contains(&*root.to_string_lossy()),
        "the message names the root: {msg}"
    );
    // The metastore was never created.
    assert!(!root.join("metadata").exists());
}

/// An ext4 image made without the `filetype` feature: readdir reports DT_UNKNOWN, as on
/// XFS with ftype=0 (which this kernel no longer mounts: V4 XFS is gone).
#[test]
fn d_type_refusal_on_a_real_filesystem_without_d_type() {
    if !privileged("d_type_refusal_on_a_real_filesystem_without_d_type") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mnt, _guard) = loop_mounted(
        dir.path(),
        32 << 20,
        &["mkfs.ext4", "-q", "-F", "-O", "^filetype,^has_journal"],
    );
    let root = mnt.join("root");
    assert!(
        !snapshot_overlay::probe::supports_d_type(&mnt).unwrap(),
        "the image has no d_type"
    );
    let err = OverlaySnapshotter::open(&root, cfg()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ext2/ext3/ext4") && msg.contains("d_type") && msg.contains("tune2fs"),
        "{msg}"
    );
}

#[test]
fn redirect_dir_with_userxattr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = OverlaySnapshotter::open(
        &dir.path().join("root"),
        OverlayConfig {
            redirect_dir: true,
            userxattr: Some(true),
            ..cfg()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string()
            .contains("redirect_dir cannot be combined with userxattr"),
        "{err}"
    );

    let sn = open(
        dir.path(),
        OverlayConfig {
            redirect_dir: true,
            userxattr: Some(false),
            ..cfg()
        },
    );
    layer(&sn, "base", "", &[]);
    let m = sn.prepare("a", "base", &CreateOptions::default()).unwrap();
    assert!(m[0].options.iter().any(|o| o == "redirect_dir=on"), "{m:?}");
    assert!(!m[0].options.iter().any(|o| o == "userxattr"), "{m:?}");
}

#[test]
fn forced_userxattr_is_on_overlays_only() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(
        dir.path(),
        OverlayConfig {
            userxattr: Some(true),
            ..cfg()
        },
    );
    let m = sn.prepare("root-a", "", &CreateOptions::default()).unwrap();
    assert_eq!(m[0].options, ["rw", "rbind"]);
    layer(&sn, "base", "", &[]);
    let m = sn.prepare("a", "base", &CreateOptions::default()).unwrap();
    let index = usize::from(sn.features().index_off);
    assert_eq!(m[0].options[index], "userxattr", "{m:?}");
    if sn.features().index_off {
        assert_eq!(m[0].options[0], "index=off");
    }
}

#[test]
fn extra_options_go_on_overlay_mounts_only() {
    let dir = tempfile::tempdir().unwrap();
    let extra = vec!["nosuid".to_string(), "metacopy=off".to_string()];
    let sn = open(
        dir.path(),
        OverlayConfig {
            mount_options: extra.clone(),
            ..cfg()
        },
    );
    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    assert_eq!(
        (m[0].kind.as_str(), &m[0].options[..]),
        ("bind", &["rw".to_string(), "rbind".to_string()][..])
    );
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    let v = sn.view("v", "base", &CreateOptions::default()).unwrap();
    assert_eq!(
        (v[0].kind.as_str(), &v[0].options[..]),
        ("bind", &["ro".to_string(), "rbind".to_string()][..])
    );
    let m = sn.prepare("b", "base", &CreateOptions::default()).unwrap();
    assert_eq!(m[0].kind, "overlay");
    let n = m[0].options.len();
    assert_eq!(
        m[0].options[n - 2..],
        extra[..],
        "extra options come last: {m:?}"
    );
    assert!(m[0].options[n - 3].starts_with("lowerdir="), "{m:?}");
    assert_eq!(
        sn.mounts("b").unwrap(),
        m,
        "Mounts returns what Prepare did"
    );
}

#[test]
fn volatile_label_adds_the_option_to_that_snapshot_only() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    assert!(sn.features().volatile, "this kernel is newer than 5.10");
    layer(&sn, "base", "", &[("f", "base")]);
    let vol = CreateOptions::with_labels(labels([(VOLATILE_LABEL, "true")]));
    let m = sn.prepare("vol", "base", &vol).unwrap();
    let upper_at = m[0]
        .options
        .iter()
        .position(|o| o.starts_with("upperdir="))
        .unwrap();
    assert_eq!(m[0].options[upper_at + 1], "volatile", "{m:?}");
    assert_eq!(sn.mounts("vol").unwrap(), m);
    let plain = sn
        .prepare("plain", "base", &CreateOptions::default())
        .unwrap();
    assert!(
        !plain[0].options.iter().any(|o| o == "volatile"),
        "{plain:?}"
    );
    let off = CreateOptions::with_labels(labels([(VOLATILE_LABEL, "false")]));
    let m2 = sn.prepare("off", "base", &off).unwrap();
    assert!(!m2[0].options.iter().any(|o| o == "volatile"), "{m2:?}");
    // A parentless snapshot is a bind: no overlay option applies.
    let root = sn.prepare("root-vol", "", &vol).unwrap();
    assert_eq!(root[0].options, ["rw", "rbind"]);

    if !privileged("volatile_label_adds_the_option_to_that_snapshot_only (mount)") {
        return;
    }
    let target = dir.path().join("mnt");
    let g = MountGuard::mount(&m, &target);
    assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "base");
    std::fs::write(target.join("g"), "volatile write").unwrap();
    drop(g);
    assert_eq!(
        std::fs::read_to_string(sn.upper_dir("vol").unwrap().join("g")).unwrap(),
        "volatile write"
    );
}

#[test]
fn layer_directories_have_containerds_modes() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let upper = sn.upper_dir("a").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&upper), 0o755);
    assert_eq!(mode(&upper.with_file_name("work")), 0o711);
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    sn.view("v", "base", &CreateOptions::default()).unwrap();
    let v = sn.upper_dir("v").unwrap();
    assert_eq!(mode(&v), 0o755);
    assert!(
        !v.with_file_name("work").exists(),
        "a view has no work directory"
    );
}

#[test]
fn new_layer_takes_the_owner_of_its_parent() {
    if !privileged("new_layer_takes_the_owner_of_its_parent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let base_fs = sn.upper_dir("a").unwrap();
    std::os::unix::fs::chown(&base_fs, Some(1234), Some(5678)).unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    let m = sn.prepare("b", "base", &CreateOptions::default()).unwrap();
    let meta = std::fs::metadata(sn.upper_dir("b").unwrap()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    let target = dir.path().join("mnt");
    let _g = MountGuard::mount(&m, &target);
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (1234, 5678, 0o755)
    );
}

fn write_many(dir: &Path, n: usize) {
    for d in 0..(n / 1000) {
        let sub = dir.join(format!("d{d}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..1000 {
            std::fs::write(sub.join(format!("f{f}")), b"x").unwrap();
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn async_remove_of_20000_files_leaves_them_until_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    assert!(sn.async_remove(), "asynchronous remove is the default");
    sn.prepare("big-active", "", &CreateOptions::default())
        .unwrap();
    let upper = sn.upper_dir("big-active").unwrap();
    write_many(&upper, 20_000);
    sn.commit("big", "big-active", &CommitOptions::default())
        .unwrap();
    assert_eq!(
        sn.usage("big").unwrap().inodes,
        20_000 + 20 + 1,
        "files, dirs and the root"
    );
    let id_dir = upper.parent().unwrap().to_path_buf();
    let id = id_dir.file_name().unwrap().to_str().unwrap().to_string();

    sn.remove("big").unwrap();
    assert_eq!(sn.stat("big").unwrap_err().kind(), ErrorKind::NotFound);
    let retired = id_dir.with_file_name(format!("rm-{id}"));
    assert!(!id_dir.exists());
    assert_eq!(
        count_files(&retired.join("fs")),
        20_000,
        "Remove did not delete the files"
    );
    // The name is free at once, and its new directory does not collide.
    layer(&sn, "big", "", &[("again", "1")]);

    sn.as_cleaner()
        .expect("overlay is a cleaner")
        .cleanup()
        .unwrap();
    assert!(!retired.exists(), "cleanup deleted the removed layer");
    assert_eq!(
        std::fs::read_to_string(sn.upper_dir("big").unwrap().join("again")).unwrap(),
        "1"
    );
    sn.check().unwrap();
}

#[test]
fn sync_option_flushes_before_commit_and_commit_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(
        dir.path(),
        OverlayConfig {
            options: snapshot_core::lifecycle::Options {
                sync: true,
                ..Default::default()
            },
            ..cfg()
        },
    );
    layer(&sn, "base", "", &[("a/b", "synced")]);
    let upper = sn.upper_dir("base").unwrap();
    assert_eq!(
        std::fs::read_to_string(upper.join("a/b")).unwrap(),
        "synced"
    );
    let usage = sn.usage("base").unwrap();
    assert_eq!(usage.inodes, 3, "fs, a and a/b");
    // A commit that must fail still reports containerd's error, sync or not.
    let err = sn
        .commit("base", "missing", &snapshot_core::CommitOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), snapshot_core::ErrorKind::AlreadyExists);
}

#[test]
fn sync_remove_deletes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(
        dir.path(),
        OverlayConfig {
            options: snapshot_core::lifecycle::Options {
                async_remove: Some(false),
                ..Default::default()
            },
            ..cfg()
        },
    );
    layer(&sn, "base", "", &[("a/b", "x")]);
    let id_dir = sn
        .upper_dir("base")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    sn.remove("base").unwrap();
    assert!(!id_dir.exists());
    assert!(
        snapshot_entries(&sn).is_empty(),
        "{:?}",
        snapshot_entries(&sn)
    );
}

#[test]
fn deep_chain_of_500_layers_mounts_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    // Durability is not what this test is about; 1000 fsyncs would dominate it.
    let sn = open(
        dir.path(),
        OverlayConfig {
            options: snapshot_core::lifecycle::Options {
                no_sync: true,
                ..Default::default()
            },
            ..cfg()
        },
    );
    let mut parent = String::new();
    for i in 0..500 {
        let name = format!("layer-{i}");
        let content = i.to_string();
        layer(
            &sn,
            &name,
            &parent,
            &[(&format!("f{i}"), &content), ("top", &content)],
        );
        parent = name;
    }
    let m = sn
        .prepare("container", &parent, &CreateOptions::default())
        .unwrap();
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let want: Vec<String> = (0..500)
        .rev()
        .map(|i| {
            sn.upper_dir(&format!("layer-{i}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        lower.split(':').collect::<Vec<_>>(),
        want,
        "all 500 parents, nearest first"
    );
    assert_eq!(sn.mounts("container").unwrap(), m);

    if !privileged("deep_chain_of_500_layers_mounts_every_layer (mount)") {
        return;
    }
    let target = dir.path().join("mnt");
    let _g = MountGuard::mount(&m, &target);
    for i in 0..500 {
        assert_eq!(
            std::fs::read_to_string(target.join(format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
    assert_eq!(
        std::fs::read_to_string(target.join("top")).unwrap(),
        "499",
        "the nearest layer wins"
    );
    std::fs::write(target.join("new"), "upper").unwrap();
    assert!(sn.upper_dir("container").unwrap().join("new").exists());
}

fn rename_lower_dir(redirect_dir: bool) -> std::io::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(
        dir.path(),
        OverlayConfig {
            redirect_dir,
            ..cfg()
        },
    );
    layer(&sn, "base", "", &[("d/f", "lower")]);
    layer(&sn, "mid", "base", &[("other", "x")]);
    let m = sn.prepare("a", "mid", &CreateOptions::default()).unwrap();
    let target = dir.path().join("mnt");
    let _g = MountGuard::mount(&m, &target);
    std::fs::rename(target.join("d"), target.join("e"))?;
    assert_eq!(
        std::fs::read_to_string(target.join("e/f")).unwrap(),
        "lower"
    );
    assert!(!target.join("d").exists());
    Ok(())
}

#[test]
fn renaming_a_lower_directory_is_exdev_without_redirect_dir() {
    if !privileged("renaming_a_lower_directory_is_exdev_without_redirect_dir") {
        return;
    }
    let err = rename_lower_dir(false).expect_err("rename of a lower dir must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::XDEV.raw_os_error()),
        "{err}"
    );
    rename_lower_dir(true).expect("redirect_dir=on makes the rename work");
}

#[test]
fn open_sweeps_orphans_and_restores_interrupted_removes() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    layer(&sn, "base", "", &[("f", "kept")]);
    let upper = sn.upper_dir("base").unwrap();
    sn.close().unwrap();

    let snaps = dir.path().join("root/snapshots");
    // A create killed between its rename and its commit, one killed while staging, and a
    // remove killed between its rename and its commit.
    std::fs::create_dir_all(snaps.join("999/fs")).unwrap();
    std::fs::create_dir_all(snaps.join("new-4242-0/fs")).unwrap();
    let id_dir = upper.parent().unwrap();
    let id = id_dir.file_name().unwrap().to_str().unwrap();
    std::fs::rename(id_dir, snaps.join(format!("rm-{id}"))).unwrap();

    let sn = open(dir.path(), cfg());
    assert_eq!(
        std::fs::read_to_string(upper.join("f")).unwrap(),
        "kept",
        "the remove is undone"
    );
    assert_eq!(sn.check().unwrap(), 1);
    let entries = snapshot_entries(&sn);
    assert!(
        !entries.iter().any(|e| e == "999" || e.starts_with("new-")),
        "{entries:?}"
    );
    sn.cleanup().unwrap();
    assert_eq!(snapshot_entries(&sn), [id.to_string()]);
}

#[test]
fn errors_follow_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    let none = CreateOptions::default();
    layer(&sn, "base", "", &[]);
    sn.prepare("a", "base", &none).unwrap();
    sn.view("v", "base", &none).unwrap();
    let kind = |r: snapshot_core::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(sn.mounts("base").map(drop)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(kind(sn.mounts("missing").map(drop)), ErrorKind::NotFound);
    assert_eq!(
        kind(sn.commit("base", "missing", &CommitOptions::default())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(sn.commit("c", "missing", &CommitOptions::default())),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(sn.commit("c", "v", &CommitOptions::default())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(kind(sn.remove("base")), ErrorKind::FailedPrecondition);
    assert_eq!(kind(sn.remove("missing")), ErrorKind::NotFound);
    assert_eq!(
        kind(sn.prepare("b", "missing", &none).map(drop)),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(sn.prepare("b", "a", &none).map(drop)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(sn.prepare("a", "", &none).map(drop)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(
            sn.update(&Info::new(Kind::Active, "a"), &["parent".into()])
                .map(drop)
        ),
        ErrorKind::InvalidArgument
    );
    // Failed creates leave no directory behind.
    let before = snapshot_entries(&sn);
    assert_eq!(before.len(), 3, "{before:?}");
    sn.close().unwrap();
    sn.close().unwrap();
    assert_eq!(kind(sn.stat("a").map(drop)), ErrorKind::Unavailable);
    assert_eq!(
        kind(sn.prepare("z", "", &none).map(drop)),
        ErrorKind::Unavailable
    );
    assert_eq!(
        snapshot_entries(&sn),
        before,
        "a create on a closed store leaves nothing"
    );
}

#[test]
fn usage_is_live_for_active_and_stored_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let upper = sn.upper_dir("a").unwrap();
    assert_eq!(sn.usage("a").unwrap().inodes, 1);
    std::fs::write(upper.join("f"), vec![1u8; 64 << 10]).unwrap();
    std::fs::create_dir(upper.join("d")).unwrap();
    let live = sn.usage("a").unwrap();
    assert_eq!(live.inodes, 3);
    assert!(live.size >= 64 << 10, "{live:?}");
    sn.commit("c", "a", &CommitOptions::default()).unwrap();
    std::fs::write(upper.join("late"), b"not counted").unwrap();
    assert_eq!(
        sn.usage("c").unwrap(),
        live,
        "the committed figure is the stored one"
    );
}

#[test]
fn open_with_sync_remove_survives_a_leftover_it_cannot_delete() {
    if !privileged("open_with_sync_remove_survives_a_leftover_it_cannot_delete") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sync = OverlayConfig {
        options: snapshot_core::lifecycle::Options {
            async_remove: Some(false),
            ..Default::default()
        },
        ..cfg()
    };
    let sn = open(dir.path(), sync.clone());
    layer(&sn, "base", "", &[("f", "x")]);
    sn.close().unwrap();
    drop(sn);
    // A retired directory holding an immutable file: no purge can delete it.
    let stuck = dir.path().join("root/snapshots/rm-stuck");
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("f"), "pinned").unwrap();
    let chattr = |flag: &str| {
        let st = std::process::Command::new("chattr")
            .arg(flag)
            .arg(stuck.join("f"))
            .status()
            .unwrap();
        assert!(st.success(), "chattr {flag}");
    };
    chattr("+i");
    let opened = OverlaySnapshotter::open(&dir.path().join("root"), sync);
    let sn = match opened {
        Ok(sn) => sn,
        Err(e) => {
            chattr("-i");
            panic!("open refused because of an undeletable leftover: {e}");
        }
    };
    assert!(
        stuck.join("f").exists(),
        "the leftover stays for a later cleanup"
    );
    assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
    assert!(
        sn.cleanup().is_err(),
        "cleanup reports what it could not delete"
    );
    chattr("-i");
    sn.cleanup().unwrap();
    assert!(!stuck.exists(), "cleanup deletes it once it can");
    sn.close().unwrap();
}

/// Fills a filesystem: big writes until ENOSPC, then small files until even those fail.
fn fill_up(dir: &Path) {
    use std::io::Write;
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    for i in 0.. {
        if std::fs::write(dir.join(format!("fill-{i}")), [1u8; 512]).is_err()
            && std::fs::create_dir(dir.join(format!("fill-d{i}"))).is_err()
        {
            break;
        }
    }
}

/// A store that opened once reopens on a full xfs (the `d_type` probe writes nothing when
/// the root has entries), and under ENOSPC every call answers at once and changes nothing.
#[test]
fn a_full_filesystem_neither_stops_a_reopen_nor_breaks_the_store() {
    if !privileged("a_full_filesystem_neither_stops_a_reopen_nor_breaks_the_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mnt, _guard) = loop_mounted(dir.path(), 320 << 20, &["mkfs.xfs", "-q", "-f"]);
    let root = mnt.join("root");
    let sn = OverlaySnapshotter::open(&root, cfg()).unwrap();
    layer(&sn, "base", "", &[("f", "x")]);
    sn.prepare("a", "base", &CreateOptions::default()).unwrap();
    sn.close().unwrap();
    drop(sn);

    fill_up(&mnt);
    let sn = OverlaySnapshotter::open(&root, cfg())
        .unwrap_or_else(|e| panic!("reopening on a full filesystem: {e}"));
    let before = sn.check().unwrap();
    let t = std::time::Instant::now();
    let mut refused = 0;
    for i in 0..20 {
        match sn.prepare(&format!("b{i}"), "base", &CreateOptions::default()) {
            Ok(_) => {}
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("snapshots"), "names the path: {e}");
            }
        }
    }
    assert!(refused > 0, "a full filesystem refused nothing");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "calls must answer at once under ENOSPC"
    );
    assert_eq!(sn.stat("a").unwrap().kind, Kind::Active);
    let after = sn.check().unwrap();
    assert_eq!(
        after,
        before + 20 - refused,
        "a refused call changed nothing"
    );
    let leftovers: Vec<_> = snapshot_entries(&sn)
        .into_iter()
        .filter(|n| n.starts_with("new-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Space back, everything works again.
    std::fs::remove_file(mnt.join("fill")).unwrap();
    sn.prepare("c", "base", &CreateOptions::default()).unwrap();
    sn.close().unwrap();
}

#[test]
fn prepare_commit_and_remove_grow_a_tiny_map() {
    let dir = tempfile::tempdir().unwrap();
    let config = OverlayConfig {
        options: snapshot_core::lifecycle::Options {
            map_size: snapshot_testsuite::TINY_MAP,
            no_sync: true,
            ..Default::default()
        },
        ..cfg()
    };
    let sn = open(dir.path(), config);
    snapshot_testsuite::grow_a_tiny_map(&sn);
    assert!(sn.store().store().map_size().unwrap() > snapshot_testsuite::TINY_MAP);
}

/// A root is made absolute, and a root that an overlay option string cannot carry is
/// refused before anything is written, naming the path.
#[test]
fn roots_are_absolute_and_must_fit_in_mount_options() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["with,comma", "with:colon"] {
        let root = dir.path().join(bad);
        let err = OverlaySnapshotter::open(&root, cfg()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains(&*root.to_string_lossy()), "{err}");
        assert!(!root.join("metadata").exists(), "nothing written for {bad}");
    }
    let cwd = std::env::current_dir().unwrap();
    let rel = dir
        .path()
        .join("rel-root")
        .strip_prefix(&cwd)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| {
            // The temp dir is not under the cwd: reach it with enough `..`.
            let ups = cwd.components().count() - 1;
            let mut p = std::path::PathBuf::new();
            for _ in 0..ups {
                p.push("..");
            }
            p.join(dir.path().strip_prefix("/").unwrap())
                .join("rel-root")
        });
    assert!(rel.is_relative());
    let sn = OverlaySnapshotter::open(&rel, cfg()).unwrap();
    assert!(sn.root().is_absolute(), "{}", sn.root().display());
    layer(&sn, "base", "", &[("f", "x")]);
    let m = sn.prepare("a", "base", &CreateOptions::default()).unwrap();
    for o in &m[0].options {
        if let Some(v) = o
            .strip_prefix("upperdir=")
            .or_else(|| o.strip_prefix("lowerdir="))
        {
            assert!(Path::new(v).is_absolute(), "{o}");
        }
    }
}

fn idmapped(uid: &str, gid: &str) -> CreateOptions {
    CreateOptions::with_labels(labels([
        (snapshot_core::idmap::UID_MAPPING_LABEL, uid),
        (snapshot_core::idmap::GID_MAPPING_LABEL, gid),
    ]))
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// containerd 2.x's ID-mapped snapshots: the upper directory belongs to the mapped root,
/// every mount carries the labels' values as `uidmap=`/`gidmap=` first, and mounted, the
/// image's files (owned by 0 on disk, never chowned) show as the mapped root's.
#[test]
fn idmapped_snapshots_own_their_upper_and_map_their_layers() {
    if !privileged("idmapped_snapshots_own_their_upper_and_map_their_layers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    assert!(
        sn.features().idmapped_lowers,
        "this kernel idmaps overlay lowers"
    );
    layer(&sn, "l1", "", &[("etc/one", "1")]);
    layer(&sn, "l2", "l1", &[("etc/two", "2")]);
    let (uid, gid) = ("0:100000:1,1:200001:65535", "0:300000:65536");
    let m = sn.prepare("c", "l2", &idmapped(uid, gid)).unwrap();
    let m_c = m.clone();
    assert_eq!(m[0].kind, "overlay");
    assert_eq!(
        &m[0].options[..2],
        [format!("uidmap={uid}"), format!("gidmap={gid}")]
    );
    assert_eq!(
        sn.mounts("c").unwrap(),
        m,
        "Mounts returns what Prepare did"
    );
    let upper = sn.upper_dir("c").unwrap();
    assert_eq!(
        owner(&upper),
        (100000, 300000),
        "the upper belongs to the mapped root"
    );
    assert_eq!(
        owner(&upper.with_file_name("work")),
        (0, 0),
        "work is not chowned"
    );
    let target = dir.path().join("mnt");
    {
        let _g = MountGuard::mount(&m, &target);
        assert_eq!(owner(&target.join("etc/one")), (100000, 300000));
        assert_eq!(owner(&target.join("etc/two")), (100000, 300000));
        std::fs::write(target.join("etc/new"), "n").unwrap();
    }
    assert!(upper.join("etc/new").exists());
    assert_eq!(
        owner(&sn.upper_dir("l1").unwrap().join("etc/one")),
        (0, 0),
        "the layer's files are not chowned"
    );

    // Without a parent (a blank tree made ahead), a view of one layer (a read-only bind)
    // and of two (a read-only overlay): each carries the mapping.
    let m = sn.prepare("bare", "", &idmapped(uid, gid)).unwrap();
    assert_eq!(m[0].kind, "bind");
    assert_eq!(
        m[0].options[..2],
        [format!("uidmap={uid}"), format!("gidmap={gid}")]
    );
    // Mounted as an idmapped bind, its root (0 on disk, never chowned: that would map
    // it twice) is the mapped root's, and what the mapped root writes lands as 0.
    let bare = sn.upper_dir("bare").unwrap();
    assert_eq!(owner(&bare), (0, 0));
    {
        let t = dir.path().join("bare-mnt");
        let _g = MountGuard::mount(&m, &t);
        assert_eq!(
            owner(&t),
            (100000, 300000),
            "the container's root owns its root"
        );
        // As the container's root would: host IDs 100000:300000.
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo m > {}", t.join("made").display()))
            .uid(100000)
            .gid(300000)
            .status()
            .unwrap();
        assert!(st.success(), "the mapped root writes into its layer");
        assert_eq!(owner(&t.join("made")), (100000, 300000));
    }
    assert_eq!(
        owner(&bare.join("made")),
        (0, 0),
        "stored in the container's IDs"
    );
    for (key, parent, kind) in [("v1", "l1", "bind"), ("v2", "l2", "overlay")] {
        let m = sn.view(key, parent, &idmapped(uid, gid)).unwrap();
        assert_eq!(m[0].kind, kind, "{key}");
        assert_eq!(m[0].options[0], format!("uidmap={uid}"), "{key}");
        let t = dir.path().join(key);
        let _g = MountGuard::mount(&m, &t);
        assert_eq!(owner(&t.join("etc/one")), (100000, 300000), "{key}");
    }
    // Plain snapshots beside them are unchanged.
    let m = sn
        .prepare("plain", "l2", &CreateOptions::default())
        .unwrap();
    assert!(
        m[0].options.iter().all(|o| !o.starts_with("uidmap=")),
        "{m:?}"
    );
    assert_eq!(owner(&sn.upper_dir("plain").unwrap()), (0, 0));
    // The mapping is fixed at create: an Update may not change, add or drop it (the
    // upper's owner follows it), and changes nothing when refused.
    let info = sn.stat("c").unwrap();
    for (label, value) in [
        (
            snapshot_core::idmap::UID_MAPPING_LABEL,
            Some("0:200000:65536"),
        ),
        (snapshot_core::idmap::GID_MAPPING_LABEL, None),
    ] {
        let mut changed = info.clone();
        match value {
            Some(v) => changed.labels.insert(label.to_string(), v.to_string()),
            None => changed.labels.remove(label),
        };
        let e = sn
            .update(&changed, &[format!("labels.{label}")])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(
            e.to_string().contains(label) && e.to_string().contains("\"c\""),
            "{e}"
        );
    }
    let mut added = sn.stat("plain").unwrap();
    added.labels.insert(
        snapshot_core::idmap::UID_MAPPING_LABEL.to_string(),
        "0:100000:65536".to_string(),
    );
    let e = sn.update(&added, &[]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert_eq!(sn.stat("c").unwrap().labels, info.labels);
    assert_eq!(sn.mounts("c").unwrap(), m_c);
    // Other labels still update.
    let mut other = info.clone();
    other.labels.insert("x".into(), "y".into());
    sn.update(&other, &["labels.x".to_string()]).unwrap();

    // One side only: the other is the identity, so the mount is still idmapped.
    let m = sn
        .prepare(
            "uid-only",
            "l2",
            &CreateOptions::with_labels(labels([(
                snapshot_core::idmap::UID_MAPPING_LABEL,
                "0:100000:65536",
            )])),
        )
        .unwrap();
    assert_eq!(
        m[0].options[..2],
        [
            "uidmap=0:100000:65536".to_string(),
            format!("gidmap={}", snapshot_core::idmap::IDENTITY)
        ]
    );
    {
        let t = dir.path().join("uid-only");
        let _g = MountGuard::mount(&m, &t);
        assert_eq!(owner(&t.join("etc/one")), (100000, 0));
    }

    // The mapping outlives a restart.
    sn.close().unwrap();
    let sn = open(dir.path(), cfg());
    assert_eq!(
        sn.mounts("c").unwrap()[0].options[0],
        format!("uidmap={uid}")
    );
}

#[test]
fn malformed_mappings_are_invalid_argument_and_build_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    layer(&sn, "base", "", &[("f", "1")]);
    let before = snapshot_entries(&sn);
    let uid_label = snapshot_core::idmap::UID_MAPPING_LABEL;
    let gid_label = snapshot_core::idmap::GID_MAPPING_LABEL;
    for (opts, label) in [
        (idmapped("0:100000", "0:100000:65536"), uid_label),
        (idmapped("0:100000:65536", "0:100000:0"), gid_label),
        (idmapped("0:100000:65536", "x"), gid_label),
        (idmapped("1:100000:65536", "0:100000:65536"), uid_label),
        // Ranges the kernel would refuse: overlapping, on either side.
        (
            idmapped("0:100000:65536,0:300000:10", "0:100000:65536"),
            uid_label,
        ),
        (
            idmapped("0:100000:65536", "0:100000:10,10:100005:10"),
            gid_label,
        ),
        (
            CreateOptions::with_labels(labels([(uid_label, "0:4294967295:2")])),
            uid_label,
        ),
    ] {
        for r in [sn.prepare("k", "base", &opts), sn.view("k", "base", &opts)] {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{opts:?}: {e}");
            assert!(e.to_string().contains(label), "{e}");
        }
    }
    assert_eq!(snapshot_entries(&sn), before, "nothing was built");
    sn.prepare("k", "base", &CreateOptions::default())
        .expect("the key is still free");
}

#[test]
fn kernels_without_idmapped_lowers_refuse_the_labels() {
    let l = labels([(snapshot_core::idmap::UID_MAPPING_LABEL, "0:100000:65536")]);
    let e = snapshot_overlay::idmapping(&l, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.to_string().contains("5.19"), "{e}");
    assert!(e.to_string().contains("remap-ids"), "{e}");
    assert!(snapshot_overlay::idmapping(&labels([("x", "1")]), false)
        .unwrap()
        .is_none());
    assert!(snapshot_overlay::idmapping(&l, true).unwrap().is_some());
}

/// What a process killed during an idmapped overlay mount leaves in the temporary
/// directory (an idmapped clone of a layer attached under `.snapshot-idmap-<pid>-…`):
/// fsck reports it as a leaked mount and its repair detaches it; the next idmapped mount
/// of any process sweeps such leftovers too.
#[test]
fn idmap_scratch_left_by_a_killed_process_is_found_and_taken_away() {
    if !privileged("idmap_scratch_left_by_a_killed_process_is_found_and_taken_away") {
        return;
    }
    use snapshot_core::fsck::FindingKind;
    use snapshot_core::Cleaner as _;
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path(), cfg());
    layer(&sn, "l1", "", &[("etc/one", "1")]);
    let upper = sn.upper_dir("l1").unwrap();
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let leave = |tag: &str| {
        let scratch = std::env::temp_dir().join(format!(
            "{}{dead}-{tag}",
            snapshot_core::mount::IDMAP_SCRATCH_PREFIX
        ));
        let at = scratch.join("0");
        std::fs::create_dir_all(&at).unwrap();
        rustix::mount::mount_bind(&upper, &at).unwrap();
        (scratch, at)
    };
    let (scratch, at) = leave("fsck");
    let r = sn.fsck(false).unwrap();
    let f = r
        .findings
        .iter()
        .find(|f| f.path.as_deref() == Some(at.as_path()))
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.kind, FindingKind::LeakedMount);
    assert!(f.detail.contains("killed"), "{}", f.detail);
    let r = sn.fsck(true).unwrap();
    assert!(r.findings.iter().all(|f| f.repaired), "{:#?}", r.findings);
    assert!(!scratch.exists(), "detached and removed");
    assert!(sn.fsck(false).unwrap().findings.is_empty());
    // The sweep every process runs before its first idmapped overlay mount.
    let (scratch, _) = leave("sweep");
    assert!(snapshot_core::mount::sweep_idmap_scratch(&std::env::temp_dir()) >= 1);
    assert!(!scratch.exists());
    assert!(upper.join("etc/one").exists(), "the layer is untouched");
}
