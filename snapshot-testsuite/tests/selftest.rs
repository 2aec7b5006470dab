//! Checks of the suite itself: the fstest helpers find every kind of difference, the
//! privileged gating behaves as documented, the macro stamps out every case, and the
//! unprivileged cases pass on a minimal correct backend (and catch a broken one).
//!
//! The minimal backend is a [`Storage`] on snapshot-core's shared lifecycle, as a
//! contributor's fourth backend would be: each snapshot is a directory; an active snapshot
//! starts as a full copy of its parent (mode, owner, `user.*` xattrs, symlinks and hard
//! links kept) and is bind-mounted read-write; a view is a read-only bind of its parent.
//! Its crash safety (staging, durable publish, sweep, purge) is the shared code's, not its
//! own. Simple and correct, so every case must pass on it, the privileged ones too when
//! `SNAPSHOT_TEST_PRIVILEGED=1`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snapshot_core::lifecycle::{Options, SnapshotStore, Storage};
use snapshot_core::metastore::Snapshot;
use snapshot_core::{
    CommitOptions, CreateOptions, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage,
};
use snapshot_testsuite::fstest::{self, apply};
use snapshot_testsuite::{run_case, Harness, CASES};

/// The minimal backend's [`Storage`]: everything else, crash safety included, is
/// snapshot-core's shared lifecycle ([`SnapshotStore`]). This is all a contributor writes
/// for a fourth backend.
struct CopyStorage {
    snapshots: PathBuf,
}

impl Storage for CopyStorage {
    const NAME: &'static str = "metaonly";

    fn has_tree(&self, kind: Kind, has_parent: bool) -> bool {
        kind == Kind::Active || !has_parent
    }

    fn fill(&self, dst: &Path, kind: Kind, parent: Option<&Path>, _labels: &Labels) -> Result<()> {
        std::fs::create_dir(dst).map_err(|e| Error::io("mkdir", dst, e))?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("chmod", dst, e))?;
        if let (Kind::Active, Some(p)) = (kind, parent) {
            copy_tree(p, dst, &mut HashMap::new()).map_err(|e| Error::io("copy", p, e))?;
        }
        Ok(())
    }

    fn mounts(&self, s: &Snapshot, tree: &Path, _labels: Option<&Labels>) -> Result<Vec<Mount>> {
        let (source, mode) = match (s.kind, s.parent_ids.first()) {
            (Kind::View, Some(p)) => (self.snapshots.join(p.to_string()), "ro"),
            (Kind::View, None) => (tree.to_path_buf(), "ro"),
            _ => (tree.to_path_buf(), "rw"),
        };
        Ok(vec![Mount::new(
            "bind",
            source.to_string_lossy(),
            vec!["rbind".to_string(), mode.to_string()],
        )])
    }
}

type MetaOnly = SnapshotStore<CopyStorage>;

fn open_metaonly(root: &Path) -> Result<MetaOnly> {
    let storage = CopyStorage {
        snapshots: std::path::absolute(root)
            .map_err(|e| Error::io("resolve", root, e))?
            .join("snapshots"),
    };
    SnapshotStore::open(root, storage, &Options::default())
}

/// Copies the contents of `src` into the existing directory `dst`.
fn copy_tree(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for ent in std::fs::read_dir(src)? {
        let ent = ent?;
        let (s, d) = (ent.path(), dst.join(ent.file_name()));
        let m = std::fs::symlink_metadata(&s)?;
        let ft = m.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&d)?;
            copy_tree(&s, &d, links)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&s)?, &d)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    std::fs::hard_link(first, &d)?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), d.clone());
            }
            std::fs::copy(&s, &d)?;
        } else {
            return Err(io::Error::other(format!(
                "{}: special files are not copied",
                s.display()
            )));
        }
        std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))?;
        if !ft.is_symlink() {
            // After chown, which clears set-id bits.
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
        let mut names = vec![0u8; 65536];
        let n = rustix::fs::llistxattr(&s, &mut names[..])?;
        for name in names[..n]
            .split(|b| *b == 0)
            .filter(|n| n.starts_with(b"user."))
        {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(&s, name.as_str(), &mut value[..])?;
            rustix::fs::lsetxattr(
                &d,
                name.as_str(),
                &value[..len],
                rustix::fs::XattrFlags::empty(),
            )?;
        }
    }
    Ok(())
}

struct MetaOnlyHarness;

impl Harness for MetaOnlyHarness {
    fn name(&self) -> &str {
        "metaonly"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        Ok(Box::new(open_metaonly(root)?))
    }
}

/// The minimal backend without its Cleaner and, with `removes_parents`, wrongly letting a
/// snapshot with children be removed.
struct RemovesParents(MetaOnly, bool);

impl Snapshotter for RemovesParents {
    fn stat(&self, key: &str) -> Result<Info> {
        self.0.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.0.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.0.mounts(key)
    }
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.0.prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.0.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        self.0.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        match self.0.remove(key) {
            Err(e) if self.1 && e.kind() == snapshot_core::ErrorKind::FailedPrecondition => Ok(()),
            other => other,
        }
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.0.walk(filters, f)
    }
    fn close(&self) -> Result<()> {
        self.0.close()
    }
}

struct BrokenHarness;

impl Harness for BrokenHarness {
    fn name(&self) -> &str {
        "broken"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        Ok(Box::new(RemovesParents(open_metaonly(root)?, true)))
    }
}

fn metaonly() -> MetaOnlyHarness {
    MetaOnlyHarness
}

// Every case of the suite as a test; the mounting ones skip without privileges.
mod stamped {
    snapshot_testsuite::snapshotter_suite!(metaonly_suite, crate::metaonly());

    #[test]
    fn the_macro_stamps_out_every_case() {
        let listed: Vec<&str> = snapshot_testsuite::CASES.iter().map(|c| c.name).collect();
        assert_eq!(metaonly_suite::CASE_NAMES, listed.as_slice());
    }
}

/// The cases that do not mount, run for real on the minimal backend.
#[test]
fn unprivileged_cases_pass_on_a_correct_backend() {
    let unprivileged: Vec<_> = CASES.iter().filter(|c| !c.privileged).collect();
    assert!(unprivileged.len() >= 14, "{unprivileged:?}");
    for c in unprivileged {
        run_case(&MetaOnlyHarness, c.name);
    }
}

#[test]
fn a_backend_that_removes_parents_fails_the_precondition_case() {
    let r = std::panic::catch_unwind(|| run_case(&BrokenHarness, "errors_failed_precondition"));
    let msg = r.expect_err("the case must fail on the broken backend");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("FailedPrecondition"), "{msg}");
    // The same backend passes cases that do not remove parents.
    run_case(&BrokenHarness, "walk");
}

#[test]
fn unknown_case_panics() {
    assert!(std::panic::catch_unwind(|| run_case(&MetaOnlyHarness, "no_such_case")).is_err());
}

#[test]
fn case_count() {
    assert_eq!(CASES.len(), 40);
    assert_eq!(CASES.iter().filter(|c| c.privileged).count(), 20);
}

// fstest: each kind of difference is found and named.

fn two_trees(a: &fstest::Applier) -> (tempfile::TempDir, tempfile::TempDir) {
    let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.apply(x.path()).unwrap();
    a.apply(y.path()).unwrap();
    fstest::check_directory_equal(x.path(), y.path()).unwrap();
    (x, y)
}

fn base_tree() -> fstest::Applier {
    apply([
        fstest::create_dir("/d", 0o755),
        fstest::create_file("/d/f", b"content", 0o644),
        fstest::create_file("/g", b"g", 0o600),
        fstest::symlink("d/f", "/l"),
        fstest::hardlink("/d/f", "/d/f2"),
        fstest::set_xattr("/g", "user.k", b"v"),
    ])
}

fn diff_after(change: fstest::Applier) -> fstest::Difference {
    let (x, y) = two_trees(&base_tree());
    change.apply(y.path()).unwrap();
    fstest::check_directory_equal(x.path(), y.path()).unwrap_err()
}

#[test]
fn fstest_finds_each_difference() {
    let d = diff_after(fstest::create_file("/g", b"G", 0o600));
    assert_eq!(
        (d.path.as_str(), d.what.starts_with("content")),
        ("/g", true),
        "{d}"
    );
    let d = diff_after(fstest::chmod("/g", 0o640));
    assert_eq!(d.what, "mode: expected 0600, got 0640");
    let d = diff_after(fstest::chown("/g", 1, 2));
    assert_eq!(
        (d.path.as_str(), d.what.as_str()),
        ("/g", "owner: expected 0:0, got 1:2"),
        "{d}"
    );
    let d = diff_after(apply([fstest::remove("/l"), fstest::symlink("g", "/l")]));
    assert!(d.what.starts_with("link target"), "{d}");
    let d = diff_after(fstest::set_xattr("/g", "user.k", b"w"));
    assert!(d.what.starts_with("xattrs"), "{d}");
    let d = diff_after(fstest::create_file("/new", b"", 0o644));
    assert_eq!(
        (d.path.as_str(), d.what.as_str()),
        ("/new", "unexpected file")
    );
    let d = diff_after(fstest::remove_all("/d"));
    assert_eq!(
        (d.path.as_str(), d.what.as_str()),
        ("/d", "missing (dir expected)")
    );
    // Same content, but no longer one file under two names.
    let d = diff_after(apply([
        fstest::remove("/d/f2"),
        fstest::create_file("/d/f2", b"content", 0o644),
    ]));
    assert_eq!(d.path, "/d/f");
    assert!(d.what.starts_with("hard links"), "{d}");
    let d = diff_after(apply([
        fstest::remove("/g"),
        fstest::create_dir("/g", 0o600),
    ]));
    assert_eq!(d.what, "type: expected file, got dir");
}

#[test]
fn fstest_applier_semantics() {
    let t = tempfile::tempdir().unwrap();
    let a = apply([
        fstest::create_dir("/x/y", 0o711),
        fstest::create_file("x/y/z", b"1", 0o4755),
    ]);
    a.apply(t.path()).unwrap();
    let m = std::fs::metadata(t.path().join("x/y/z")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o4755,
        "chmod after create ignores the umask"
    );
    assert_eq!(
        std::fs::metadata(t.path().join("x/y")).unwrap().mode() & 0o7777,
        0o711
    );
    fstest::remove_all("/absent").apply(t.path()).unwrap();
    assert!(fstest::remove("/absent").apply(t.path()).is_err());
    let e = fstest::create_file("../escape", b"", 0o644)
        .apply(t.path())
        .unwrap_err();
    assert_eq!(e.source.kind(), std::io::ErrorKind::InvalidInput);
    assert!(!t.path().parent().unwrap().join("escape").exists());
    let e = fstest::rename("/nope", "/x/nope")
        .apply(t.path())
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(2), "{e}");
}

#[test]
fn gating_matches_the_environment() {
    use snapshot_testsuite::privileged;
    assert_eq!(
        privileged::skip_line("native::basic"),
        "skipped: native::basic: needs SNAPSHOT_TEST_PRIVILEGED=1 and root"
    );
    let requested = privileged::privileged_requested();
    if !requested {
        assert!(!privileged::require_privileged("selftest::gating"));
        assert!(!privileged::unavailable(
            "selftest::gating",
            "no such thing"
        ));
    } else if privileged::is_root() {
        assert!(privileged::require_privileged("selftest::gating"));
        assert!(
            std::panic::catch_unwind(|| privileged::unavailable("selftest::gating", "x")).is_err()
        );
        let r = std::panic::catch_unwind(|| {
            privileged::require_privileged_with_tools("selftest::gating", &["no-such-tool-xyz"])
        });
        assert!(r.is_err(), "a missing tool must fail a privileged run");
    } else {
        assert!(
            std::panic::catch_unwind(|| privileged::require_privileged("selftest::gating"))
                .is_err()
        );
    }
    assert!(privileged::has_tool("sh"));
}

/// A copy backend described with the wrong capabilities (and without its Cleaner).
struct Misdescribed(snapshot_testsuite::Capabilities);

impl Harness for Misdescribed {
    fn name(&self) -> &str {
        "misdescribed"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        Ok(Box::new(RemovesParents(open_metaonly(root)?, false)))
    }
    fn capabilities(&self) -> snapshot_testsuite::Capabilities {
        self.0
    }
}

fn panic_message(r: std::thread::Result<()>) -> String {
    let p = r.expect_err("the case must fail");
    match p.downcast_ref::<String>() {
        Some(s) => s.clone(),
        None => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn capabilities_are_checked_not_trusted() {
    if !snapshot_testsuite::privileged::require_privileged("selftest::capabilities") {
        return;
    }
    let no_rename = Misdescribed(snapshot_testsuite::Capabilities {
        rename_lower_dir: false,
        ..Default::default()
    });
    let msg = panic_message(std::panic::catch_unwind(|| run_case(&no_rename, "rename")));
    assert!(msg.contains("rename_lower_dir is false"), "{msg}");
    let deferred = Misdescribed(snapshot_testsuite::Capabilities {
        deferred_remove: true,
        ..Default::default()
    });
    let msg = panic_message(std::panic::catch_unwind(|| {
        run_case(&deferred, "remove_frees_files")
    }));
    assert!(msg.contains("no Cleaner"), "{msg}");
    // Neither failure leaves a mount behind.
    let tmp = std::env::temp_dir();
    let left: Vec<_> = snapshot_testsuite::mounts_under(&tmp)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("snapshot-suite-misdescribed-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_rebase_capability_is_checked_not_trusted() {
    let claims = Misdescribed(snapshot_testsuite::Capabilities {
        rebase: true,
        ..Default::default()
    });
    let msg = panic_message(std::panic::catch_unwind(|| {
        run_case(&claims, "commit_rebase")
    }));
    assert!(msg.contains("the harness says rebase"), "{msg}");
}
