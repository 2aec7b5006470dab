//! Tests of what is particular to the native backend: the fidelity of the parent copy,
//! reflinks on a reflink-capable filesystem, the mount shapes, and the crash-safe layout.
#![cfg(target_os = "linux")]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use snapshot_core::mount::{mount_all, unmount_all};
use snapshot_core::{CommitOptions, CreateOptions, Kind, Mount, Snapshotter};
use snapshot_native::copy::copy_tree;
use snapshot_native::{NativeConfig, NativeSnapshotter};
use snapshot_testsuite::privileged::{require_privileged, require_privileged_with_tools};

fn open(root: &Path) -> NativeSnapshotter {
    NativeSnapshotter::open(
        root,
        NativeConfig {
            no_sync: true,
            ..NativeConfig::default()
        },
    )
    .unwrap()
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: Timespec {
            tv_sec: sec + 7,
            tv_nsec: nsec + 1,
        },
    };
    rfs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rfs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// A parent tree with every kind of entry an unprivileged user can make.
fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("dir/sub/file"), b"deep").unwrap();
    fs::write(src.join("setuid"), b"x").unwrap();
    chmod(&src.join("setuid"), 0o4755);
    fs::write(src.join("setgid"), b"x").unwrap();
    chmod(&src.join("setgid"), 0o2711);
    fs::create_dir(src.join("sticky")).unwrap();
    chmod(&src.join("sticky"), 0o1777);
    fs::write(src.join("readonly"), b"ro").unwrap();
    chmod(&src.join("readonly"), 0o444);
    fs::write(src.join("big"), vec![0xa5u8; 3 << 20]).unwrap();
    fs::write(src.join("link-a"), b"shared inode").unwrap();
    fs::hard_link(src.join("link-a"), src.join("dir/link-b")).unwrap();
    fs::hard_link(src.join("link-a"), src.join("dir/sub/link-c")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../..", src.join("dir/up-link")).unwrap();
    std::os::unix::fs::symlink("missing-target", src.join("dangling")).unwrap();
    rfs::mknodat(
        CWD,
        src.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rfs::lsetxattr(
        src.join("dir/sub/file"),
        "user.note",
        b"hello",
        XattrFlags::empty(),
    )
    .unwrap();
    rfs::lsetxattr(src.join("dir"), "user.dir", b"d", XattrFlags::empty()).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    drop(sock);
    fs::create_dir(src.join("ro-dir")).unwrap();
    fs::write(src.join("ro-dir/inside"), b"i").unwrap();
    // Times last, children before their directories, as they must come out.
    for (i, p) in [
        "dir/sub/file",
        "dir/sub",
        "dir/link-b",
        "dir",
        "setuid",
        "big",
        "abs-link",
        "dir/up-link",
        "fifo",
        "ro-dir/inside",
        "ro-dir",
        "sticky",
    ]
    .iter()
    .enumerate()
    {
        set_times(&src.join(p), 1_000_000_000 + i as i64 * 1000, 123_456_789);
    }
    chmod(&src.join("ro-dir"), 0o555);
}

/// Asserts `dst` mirrors `src` entry by entry: type, mode, owner, times, xattrs,
/// symlink targets, contents and link structure.
fn assert_same_tree(src: &Path, dst: &Path) {
    let mut stack = vec![PathBuf::new()];
    let mut checked = 0;
    while let Some(rel) = stack.pop() {
        let (s, d) = (src.join(&rel), dst.join(&rel));
        let (sm, dm) = (
            fs::symlink_metadata(&s).unwrap(),
            fs::symlink_metadata(&d).unwrap(),
        );
        if sm.file_type().is_socket() {
            panic!("socket {} was copied", d.display());
        }
        assert_eq!(sm.mode(), dm.mode(), "mode of {}", d.display());
        assert_eq!(
            (sm.uid(), sm.gid()),
            (dm.uid(), dm.gid()),
            "owner of {}",
            d.display()
        );
        assert_eq!(
            (sm.mtime(), sm.mtime_nsec()),
            (dm.mtime(), dm.mtime_nsec()),
            "mtime of {}",
            d.display()
        );
        // Reading one name of a multiply-linked file moves the atime of all its names.
        if !sm.is_symlink() && sm.nlink() == 1 {
            assert_eq!(
                (sm.atime(), sm.atime_nsec()),
                (dm.atime(), dm.atime_nsec()),
                "atime of {}",
                d.display()
            );
        }
        assert_eq!(sm.nlink(), dm.nlink(), "link count of {}", d.display());
        assert_eq!(sm.rdev(), dm.rdev(), "device of {}", d.display());
        for name in ["user.note", "user.dir", "trusted.t", "security.capability"] {
            assert_eq!(
                xattr(&s, name),
                xattr(&d, name),
                "{name} of {}",
                d.display()
            );
        }
        if sm.is_symlink() {
            assert_eq!(fs::read_link(&s).unwrap(), fs::read_link(&d).unwrap());
        } else if sm.is_file() {
            assert_eq!(
                fs::read(&s).unwrap(),
                fs::read(&d).unwrap(),
                "content of {}",
                d.display()
            );
        } else if sm.is_dir() {
            for e in fs::read_dir(&s).unwrap() {
                let e = e.unwrap();
                if !e.file_type().unwrap().is_socket() {
                    stack.push(rel.join(e.file_name()));
                }
            }
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} entries compared");
}

#[test]
fn copy_keeps_modes_times_xattrs_links_and_never_follows_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    build_tree(&src);
    chmod(&src, 0o750);
    set_times(&src, 1_500_000_000, 5);
    let stats = copy_tree(&src, &dst).unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(stats.hardlinks, 2, "{stats:?}");
    assert_eq!(stats.symlinks, 3, "{stats:?}");
    assert_eq!(stats.specials, 1, "{stats:?}");
    assert_eq!(stats.sockets_skipped, 1, "{stats:?}");
    assert!(!dst.join("socket").exists());
    let a = fs::metadata(dst.join("link-a")).unwrap();
    assert_eq!(
        a.ino(),
        fs::metadata(dst.join("dir/sub/link-c")).unwrap().ino(),
        "hard links stay links"
    );
    assert_ne!(
        a.ino(),
        fs::metadata(src.join("link-a")).unwrap().ino(),
        "the copy is a new inode"
    );
    // Symlinks that point outside were copied, not followed: no passwd content, no
    // entries of / in the copy.
    assert!(fs::symlink_metadata(dst.join("abs-link"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        fs::read_link(dst.join("dir/up-link")).unwrap(),
        Path::new("../../..")
    );
    assert_eq!(stats.files, 7, "{stats:?}");
    assert_eq!(stats.reflinked + stats.copied, 7, "{stats:?}");
    assert_eq!(stats.xattrs, 2, "{stats:?}");
    // The fifo is a fifo.
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(dst.join("fifo")).unwrap().file_type()
    ));
}

#[test]
fn copy_keeps_owners_devices_and_privileged_xattrs() {
    if !require_privileged("native::copy_keeps_owners_devices_and_privileged_xattrs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    build_tree(&src);
    let owned = src.join("owned");
    fs::write(&owned, b"o").unwrap();
    std::os::unix::fs::chown(&owned, Some(1234), Some(5678)).unwrap();
    chmod(&owned, 0o6755); // chown cleared setuid; the copy must keep it after its chown
    std::os::unix::fs::lchown(src.join("abs-link"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::chown(src.join("dir"), Some(7), Some(8)).unwrap();
    rfs::mknodat(
        CWD,
        src.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rfs::makedev(1, 3),
    )
    .unwrap();
    rfs::mknodat(
        CWD,
        src.join("loop"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rfs::makedev(7, 200),
    )
    .unwrap();
    rfs::lsetxattr(&owned, "trusted.t", b"trusted", XattrFlags::empty()).unwrap();
    // A file capability (cap_net_bind_service+ep, v2 format).
    let mut cap = vec![0u8; 20];
    cap[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
    rfs::lsetxattr(&owned, "security.capability", &cap, XattrFlags::empty()).unwrap();
    rfs::lsetxattr(
        src.join("abs-link"),
        "trusted.t",
        b"on a symlink",
        XattrFlags::empty(),
    )
    .unwrap();
    let stats = copy_tree(&src, &dst).unwrap();
    assert_same_tree(&src, &dst);
    assert_eq!(stats.specials, 3, "{stats:?}");
    let m = fs::metadata(dst.join("owned")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o6755));
    assert_eq!(
        xattr(&dst.join("owned"), "security.capability").as_deref(),
        Some(&cap[..])
    );
    assert_eq!(
        xattr(&dst.join("abs-link"), "trusted.t").as_deref(),
        Some(&b"on a symlink"[..])
    );
    assert_eq!(
        fs::symlink_metadata(dst.join("abs-link")).unwrap().uid(),
        42
    );
    assert_eq!(
        fs::symlink_metadata(dst.join("null")).unwrap().rdev(),
        rfs::makedev(1, 3)
    );
}

#[test]
fn prepare_copies_the_parent_and_the_parent_keeps_its_content() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(&tmp.path().join("root"));
    let m = sn
        .prepare("base-active", "", &CreateOptions::default())
        .unwrap();
    assert_eq!(m.len(), 1);
    let base_dir = PathBuf::from(&m[0].source);
    assert_eq!(
        fs::metadata(&base_dir).unwrap().mode() & 0o7777,
        0o755,
        "root of the mount"
    );
    build_tree(&base_dir);
    sn.commit("base", "base-active", &CommitOptions::default())
        .unwrap();
    let usage = sn.usage("base").unwrap();
    assert!(usage.size >= 3 << 20 && usage.inodes > 10, "{usage:?}");

    let m = sn
        .prepare("child", "base", &CreateOptions::default())
        .unwrap();
    let child_dir = PathBuf::from(&m[0].source);
    assert_ne!(child_dir, base_dir);
    assert_eq!(
        m,
        vec![Mount::new(
            "bind",
            child_dir.to_str().unwrap(),
            vec!["rbind".into(), "rw".into()]
        )]
    );
    assert_same_tree(&base_dir, &child_dir);
    fs::write(child_dir.join("dir/sub/file"), b"changed").unwrap();
    assert_eq!(fs::read(base_dir.join("dir/sub/file")).unwrap(), b"deep");
    assert!(sn.usage("child").unwrap().size >= 3 << 20);

    // A view of the parent copies nothing and binds the parent read-only.
    let snapshots = fs::read_dir(base_dir.parent().unwrap()).unwrap().count();
    let v = sn.view("view", "base", &CreateOptions::default()).unwrap();
    assert_eq!(
        v,
        vec![Mount::new(
            "bind",
            base_dir.to_str().unwrap(),
            vec!["rbind".into(), "ro".into()]
        )]
    );
    assert_eq!(
        fs::read_dir(base_dir.parent().unwrap()).unwrap().count(),
        snapshots,
        "a view made a directory"
    );
    assert_eq!(sn.mounts("view").unwrap(), v);
    assert_eq!(sn.stat("view").unwrap().kind, Kind::View);
    // A parentless view has its own (empty) directory.
    let v = sn
        .view("empty-view", "", &CreateOptions::default())
        .unwrap();
    assert_eq!(v[0].options, vec!["rbind", "ro"]);
    assert!(Path::new(&v[0].source).is_dir());

    sn.remove("view").unwrap();
    assert!(
        base_dir.is_dir(),
        "removing a view of the parent left the parent alone"
    );
    sn.remove("child").unwrap();
    assert!(!child_dir.exists());
    let err = sn.remove("base").map(|_| ()).err();
    assert!(err.is_none(), "base has no children left: {err:?}");
    assert!(!base_dir.exists());
}

#[test]
fn open_sweeps_orphans_and_half_built_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sn = open(&root);
    let m = sn.prepare("keep", "", &CreateOptions::default()).unwrap();
    fs::write(Path::new(&m[0].source).join("f"), b"kept").unwrap();
    sn.close().unwrap();
    sn.close().unwrap();
    drop(sn);
    let snapshots = root.join("snapshots");
    // What a crash can leave: a staging directory, a published directory whose
    // transaction never committed, a retired directory whose deletion never ran.
    for d in ["new-999-0", "77", "rm-5"] {
        fs::create_dir_all(snapshots.join(d).join("x")).unwrap();
    }
    let sn = open(&root);
    let mut left: Vec<String> = fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["1"], "only the live snapshot stays");
    assert_eq!(fs::read(snapshots.join("1/f")).unwrap(), b"kept");
    // cleanup does the same at run time.
    fs::create_dir(snapshots.join("78")).unwrap();
    sn.as_cleaner()
        .expect("native has a cleaner")
        .cleanup()
        .unwrap();
    assert!(!snapshots.join("78").exists());
    assert!(snapshots.join("1").exists());
}

#[test]
fn a_remove_killed_before_its_commit_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sn = open(&root);
    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    fs::write(Path::new(&m[0].source).join("f"), b"layer").unwrap();
    sn.commit("layer", "a", &CommitOptions::default()).unwrap();
    sn.close().unwrap();
    drop(sn);
    // What a kill between a remove's rename and its commit leaves: a live record whose
    // directory is already `rm-<id>`.
    let snapshots = root.join("snapshots");
    fs::rename(snapshots.join("1"), snapshots.join("rm-1")).unwrap();
    let sn = open(&root);
    assert_eq!(fs::read(snapshots.join("1/f")).unwrap(), b"layer");
    assert!(!snapshots.join("rm-1").exists());
    // cleanup repairs the same at run time.
    fs::rename(snapshots.join("1"), snapshots.join("rm-1")).unwrap();
    sn.as_cleaner().unwrap().cleanup().unwrap();
    assert_eq!(fs::read(snapshots.join("1/f")).unwrap(), b"layer");
    let child = sn.prepare("b", "layer", &CreateOptions::default()).unwrap();
    assert_eq!(
        fs::read(Path::new(&child[0].source).join("f")).unwrap(),
        b"layer"
    );
}

#[test]
fn view_mount_shows_the_parent_and_refuses_writes() {
    if !require_privileged("native::view_mount_shows_the_parent_and_refuses_writes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(&tmp.path().join("root"));
    let target = tmp.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let guard = Unmount(target.clone());
    mount_all(&m, &target).unwrap();
    fs::write(target.join("through-the-mount"), b"1").unwrap();
    unmount_all(&target).unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    let v = sn.view("v", "base", &CreateOptions::default()).unwrap();
    mount_all(&v, &target).unwrap();
    assert_eq!(fs::read(target.join("through-the-mount")).unwrap(), b"1");
    let err = fs::write(target.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS, got {err}");
    drop(guard);
}

/// Unmounts everything at a path when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = unmount_all(&self.0);
    }
}

/// A loop-mounted btrfs image, torn down (unmount, detach) when dropped.
struct BtrfsImage {
    mnt: PathBuf,
    dev: String,
    _dir: tempfile::TempDir,
}

impl BtrfsImage {
    fn new() -> BtrfsImage {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
        run("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        let out = Command::new("losetup")
            .args(["--find", "--show", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let image = BtrfsImage {
            mnt,
            dev,
            _dir: dir,
        };
        run("mount", &[&image.dev, image.mnt.to_str().unwrap()]);
        image
    }
}

impl Drop for BtrfsImage {
    fn drop(&mut self) {
        let _ = unmount_all(&self.mnt);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prepare_reflinks_file_data_on_btrfs() {
    let test = "native::prepare_reflinks_file_data_on_btrfs";
    if !require_privileged_with_tools(test, &["mkfs.btrfs", "losetup", "filefrag"]) {
        return;
    }
    let image = BtrfsImage::new();
    let sn = open(&image.mnt.join("root"));
    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let base = PathBuf::from(&m[0].source);
    fs::write(base.join("data"), vec![0x5au8; 1 << 20]).unwrap();
    fs::write(base.join("empty"), b"").unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    rfs::sync();

    // Through the copy code: every non-empty file was cloned, none copied.
    let copy = image.mnt.join("copy");
    fs::create_dir(&copy).unwrap();
    let stats = copy_tree(&base, &copy).unwrap();
    assert_eq!(
        (stats.files, stats.reflinked, stats.copied),
        (2, 1, 0),
        "{stats:?}"
    );

    // Through prepare: the child's extents are shared with the parent's.
    let m = sn
        .prepare("child", "base", &CreateOptions::default())
        .unwrap();
    let child = PathBuf::from(&m[0].source);
    rfs::sync();
    let out = Command::new("filefrag")
        .args(["-v"])
        .arg(child.join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "filefrag: {text}");
    assert!(
        text.contains("shared"),
        "extents of the copy are not shared:\n{text}"
    );
    assert_eq!(fs::read(child.join("data")).unwrap(), vec![0x5au8; 1 << 20]);
    sn.close().unwrap();
}

#[test]
fn failed_copy_leaves_no_directory_and_no_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sn = open(&root);
    let m = sn.prepare("a", "", &CreateOptions::default()).unwrap();
    sn.commit("base", "a", &CommitOptions::default()).unwrap();
    // The parent's directory is gone (damaged root): the copy fails.
    fs::remove_dir_all(&m[0].source).unwrap();
    let err = sn
        .prepare("child", "base", &CreateOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), snapshot_core::ErrorKind::Unknown);
    assert!(
        err.to_string().contains(&m[0].source),
        "error names the parent's path: {err}"
    );
    assert_eq!(
        sn.stat("child").unwrap_err().kind(),
        snapshot_core::ErrorKind::NotFound
    );
    let left: Vec<_> = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "staging directory left behind: {left:?}");
    // A commit of a missing key is NotFound, of a view FailedPrecondition, and an
    // existing name wins over both.
    sn.view("v", "base", &CreateOptions::default()).unwrap();
    let kind = |r: snapshot_core::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(sn.commit("x", "missing", &CommitOptions::default())),
        snapshot_core::ErrorKind::NotFound
    );
    assert_eq!(
        kind(sn.commit("x", "v", &CommitOptions::default())),
        snapshot_core::ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(sn.commit("base", "v", &CommitOptions::default())),
        snapshot_core::ErrorKind::AlreadyExists
    );
    assert_eq!(
        sn.mounts("base").unwrap_err().kind(),
        snapshot_core::ErrorKind::FailedPrecondition
    );
}

#[test]
fn rebase_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    sn.prepare("b0", "", &CreateOptions::default()).unwrap();
    sn.commit("base", "b0", &CommitOptions::default()).unwrap();
    sn.prepare("a", "", &CreateOptions::default()).unwrap();
    let before = sn.stat("a").unwrap();
    let opts = CommitOptions {
        parent: "base".into(),
        ..CommitOptions::default()
    };
    let err = sn.commit("c", "a", &opts).unwrap_err();
    assert_eq!(
        err.kind(),
        snapshot_core::ErrorKind::NotImplemented,
        "{err}"
    );
    assert!(
        err.to_string().contains("backend native cannot rebase"),
        "{err}"
    );
    assert_eq!(
        sn.stat("a").unwrap(),
        before,
        "the active snapshot is untouched"
    );
    assert_eq!(
        sn.stat("c").unwrap_err().kind(),
        snapshot_core::ErrorKind::NotFound
    );
    // The parent can still be removed: no child link was recorded.
    sn.remove("base").unwrap();
    // A commit naming the snapshot's own parent is no rebase.
    sn.prepare("d", "", &CreateOptions::default()).unwrap();
    sn.commit("e", "a", &CommitOptions::default()).unwrap();
}

/// A Prepare copying its parent while another client removes that parent ends as if the
/// two calls were ordered: the Prepare fails NotFound (the remove came first) or the
/// remove fails FailedPrecondition (the Prepare came first). Never Unknown.
#[test]
fn prepare_racing_the_removal_of_its_parent_ends_as_if_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let sn = std::sync::Arc::new(open(&dir.path().join("root")));
    let mut raced = 0;
    for round in 0..20 {
        let parent = format!("parent-{round}");
        let key = format!("{parent}-active");
        sn.prepare(&key, "", &CreateOptions::default()).unwrap();
        let tree = sn
            .root()
            .join("snapshots")
            .join(sn.store().snapshot(&key).unwrap().id.to_string());
        for i in 0..400 {
            fs::write(tree.join(format!("f{i}")), "x").unwrap();
        }
        sn.commit(&parent, &key, &CommitOptions::default()).unwrap();
        let child = format!("child-{round}");
        let t = {
            let (sn, parent, child) = (sn.clone(), parent.clone(), child.clone());
            std::thread::spawn(move || sn.prepare(&child, &parent, &CreateOptions::default()))
        };
        std::thread::sleep(std::time::Duration::from_micros(200 * (round % 5)));
        let removed = sn.remove(&parent);
        let prepared = t.join().unwrap();
        match (&prepared, &removed) {
            (Ok(_), Err(e)) => {
                assert_eq!(
                    e.kind(),
                    snapshot_core::ErrorKind::FailedPrecondition,
                    "{e}"
                );
                sn.remove(&child).unwrap();
                sn.remove(&parent).unwrap();
            }
            (Err(e), Ok(())) => {
                assert_eq!(
                    e.kind(),
                    snapshot_core::ErrorKind::NotFound,
                    "round {round}: {e}"
                );
                raced += 1;
            }
            other => panic!("round {round}: not as if ordered: {other:?}"),
        }
        assert_eq!(sn.store().check().unwrap(), 0, "round {round}");
    }
    println!("in {raced} of 20 rounds the remove came first");
    let left: Vec<_> = fs::read_dir(sn.root().join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn prepare_commit_and_remove_grow_a_tiny_map() {
    let dir = tempfile::tempdir().unwrap();
    let config = NativeConfig {
        map_size: snapshot_testsuite::TINY_MAP,
        no_sync: true,
        ..NativeConfig::default()
    };
    let sn = NativeSnapshotter::open(&dir.path().join("root"), config).unwrap();
    snapshot_testsuite::grow_a_tiny_map(&sn);
    assert!(sn.store().store().map_size().unwrap() > snapshot_testsuite::TINY_MAP);
}

/// A parent deeper than the copy goes is refused with FailedPrecondition naming the
/// directory, not copied until the process runs out of descriptors or memory.
#[test]
fn a_parent_too_deep_to_copy_is_refused_clearly() {
    use rustix::fs::{mkdirat, openat, OFlags};
    let dir = tempfile::tempdir().unwrap();
    let sn = open(&dir.path().join("root"));
    sn.prepare("deep-a", "", &CreateOptions::default()).unwrap();
    let tree = sn
        .root()
        .join("snapshots")
        .join(sn.store().snapshot("deep-a").unwrap().id.to_string());
    let mut fd = openat(
        rfs::CWD,
        &tree,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..snapshot_native::copy::MAX_DEPTH + 10 {
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    drop(fd);
    sn.commit("deep", "deep-a", &CommitOptions::default())
        .unwrap();
    let err = sn
        .prepare("child", "deep", &CreateOptions::default())
        .unwrap_err();
    assert_eq!(
        err.kind(),
        snapshot_core::ErrorKind::FailedPrecondition,
        "{err}"
    );
    assert!(err.to_string().contains("levels"), "{err}");
    assert_eq!(
        sn.stat("child").unwrap_err().kind(),
        snapshot_core::ErrorKind::NotFound
    );
    // Nothing half-copied is left, and the deep layer is still removable.
    sn.remove("deep").unwrap();
    let left: Vec<_> = fs::read_dir(sn.root().join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
