//! The shared lifecycle ([`SnapshotStore`]) on a small test backend: the crash-safe order
//! of create, commit and remove, the sweep of what a crash leaves, purging, the root lock,
//! options that change behaviour, and races that end as if ordered.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use snapshot_core::lifecycle::{Options, SnapshotStore, Storage};
use snapshot_core::metastore::Snapshot;
use snapshot_core::{
    Cleaner, CommitOptions, CreateOptions, Error, ErrorKind, Kind, Labels, Mount, Result,
    Snapshotter,
};

/// Directories holding one file per layer (`data`), copied from the parent. With
/// `separate`, committed trees live in `committed/` and a commit freezes a copy there, as
/// btrfs does with subvolumes.
#[derive(Default)]
struct Dirs {
    separate: bool,
    fail_fill: Mutex<Option<Error>>,
    // Taken by the next fill: it waits at the barrier twice (started, may go on).
    gate: Mutex<Option<Arc<Barrier>>>,
    flushes: AtomicUsize,
    freezes: AtomicUsize,
    // Whether creates may take blank trees made ahead (the default backends' way); the
    // tests of the staging path leave it off.
    blanks: bool,
    // Every tree sync_published flushed, in order.
    synced: Mutex<Vec<PathBuf>>,
    // Taken by the next fill of a blank tree made ahead (named after its id, where a
    // create's staging tree is not): it waits at the barrier twice.
    blank_gate: Mutex<Option<Arc<Barrier>>>,
    // The next fill of a blank tree panics.
    panic_blank: AtomicBool,
}

impl Storage for Dirs {
    const NAME: &'static str = "dirs";

    fn kind_dir(&self, kind: Kind) -> &'static str {
        match (self.separate, kind) {
            (true, Kind::Committed) => "committed",
            _ => "snapshots",
        }
    }

    fn fill(&self, dst: &Path, _kind: Kind, parent: Option<&Path>, _labels: &Labels) -> Result<()> {
        fs::create_dir(dst).map_err(|e| Error::io("mkdir", dst, e))?;
        let ahead = dst
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if ahead {
            let gate = self.blank_gate.lock().unwrap().take();
            if let Some(gate) = gate {
                gate.wait();
                gate.wait();
            }
            assert!(
                !self.panic_blank.swap(false, Ordering::SeqCst),
                "a blank fill told to panic"
            );
        }
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.wait();
            gate.wait();
        }
        let fail = self.fail_fill.lock().unwrap().take();
        if let Some(e) = fail {
            return Err(e);
        }
        if let Some(p) = parent {
            // The parent must be there; its data file only where a layer wrote one.
            fs::metadata(p).map_err(|e| Error::io("open parent", p, e))?;
            let src = p.join("data");
            if src.exists() {
                fs::copy(&src, dst.join("data")).map_err(|e| Error::io("copy", &src, e))?;
            }
        }
        Ok(())
    }

    fn blank_serves(&self, _has_parent: bool) -> bool {
        self.blanks
    }

    fn adapt_blank(&self, tree: &Path, parent: Option<&Path>, _labels: &Labels) -> Result<()> {
        let Some(parent) = parent else {
            return Ok(());
        };
        fs::metadata(parent).map_err(|e| Error::io("open parent", parent, e))?;
        let src = parent.join("data");
        if !src.exists() {
            return Ok(());
        }
        fs::copy(&src, tree.join("data")).map_err(|e| Error::io("copy", &src, e))?;
        self.sync_published(tree)
    }

    fn sync_published(&self, tree: &Path) -> Result<()> {
        self.synced.lock().unwrap().push(tree.to_path_buf());
        snapshot_core::layout::fsync_dir(tree)
    }

    fn flush(&self, tree: &Path) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        snapshot_core::layout::sync_filesystem(tree)
    }

    fn freeze(&self, active: &Path, dst: &Path) -> Result<()> {
        self.freezes.fetch_add(1, Ordering::SeqCst);
        fs::create_dir(dst).map_err(|e| Error::io("mkdir", dst, e))?;
        let src = active.join("data");
        if src.exists() {
            fs::copy(&src, dst.join("data")).map_err(|e| Error::io("copy", &src, e))?;
        }
        Ok(())
    }

    fn mounts(&self, s: &Snapshot, tree: &Path, _labels: Option<&Labels>) -> Result<Vec<Mount>> {
        let mode = if s.kind == Kind::Active { "rw" } else { "ro" };
        Ok(vec![Mount::new(
            "bind",
            tree.to_string_lossy(),
            vec!["rbind".to_string(), mode.to_string()],
        )])
    }
}

type Store = SnapshotStore<Dirs>;

fn open_with(root: &Path, storage: Dirs, options: &Options) -> Store {
    SnapshotStore::open(root, storage, options).unwrap()
}

fn open(root: &Path) -> Store {
    open_with(root, Dirs::default(), &Options::default())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn opt() -> CreateOptions {
    CreateOptions::default()
}

/// Prepares `key` on `parent`, writes `data` into its tree and commits it as `name`.
fn layer(sn: &Store, name: &str, parent: &str, data: &str) -> u64 {
    let key = format!("{name}-active");
    sn.prepare(&key, parent, &opt()).unwrap();
    let id = sn.snapshot(&key).unwrap().id;
    fs::write(sn.tree(Kind::Active, id).join("data"), data).unwrap();
    sn.commit(name, &key, &CommitOptions::default()).unwrap();
    id
}

fn snapshots_dir(sn: &Store) -> PathBuf {
    sn.root().join("snapshots")
}

#[test]
fn open_makes_private_directories_and_locks_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a/b/root");
    let sn = open(&root);
    assert_eq!(sn.root(), root);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("snapshots")), 0o700);
    assert!(root.join("metadata").is_dir());
    // One owner at a time: a second open is refused, naming the root and the holder.
    let err = SnapshotStore::open(&root, Dirs::default(), &Options::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(msg.contains(root.to_str().unwrap()), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    // Closed, the root opens again.
    sn.close().unwrap();
    let again = open(&root);
    drop(again);
    drop(sn);
    open(&root);
}

#[test]
fn a_relative_root_is_made_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let _cwd = CwdGuard::enter(tmp.path());
    let sn = open(Path::new("rel/root"));
    assert!(sn.root().is_absolute(), "{}", sn.root().display());
    assert_eq!(
        sn.root(),
        tmp.path().canonicalize().unwrap().join("rel/root")
    );
    let m = sn.prepare("a", "", &opt()).unwrap();
    assert!(Path::new(&m[0].source).is_absolute(), "{m:?}");
}

struct CwdGuard(PathBuf);

impl CwdGuard {
    fn enter(dir: &Path) -> CwdGuard {
        static LOCK: Mutex<()> = Mutex::new(());
        std::mem::forget(LOCK.lock().unwrap());
        let old = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.canonicalize().unwrap()).unwrap();
        CwdGuard(old)
    }
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

#[test]
fn create_publishes_under_the_id_and_a_failed_fill_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    sn.prepare("a", "", &opt()).unwrap();
    let id = sn.snapshot("a").unwrap().id;
    assert!(sn.tree(Kind::Active, id).is_dir());
    assert_eq!(names(&snapshots_dir(&sn)), vec![id.to_string()]);

    *sn.storage().fail_fill.lock().unwrap() = Some(Error::unknown("disk on fire"));
    let err = sn.prepare("b", "", &opt()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unknown);
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(sn.stat("b").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        names(&snapshots_dir(&sn)),
        vec![id.to_string()],
        "the staging tree went with the error"
    );
    // A create that must fail builds nothing at all.
    let err = sn.prepare("c", "missing", &opt()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = sn.prepare("a", "", &opt()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(names(&snapshots_dir(&sn)), vec![id.to_string()]);
    assert_eq!(sn.check().unwrap(), 1);
}

#[test]
fn a_create_onto_an_orphan_of_its_id_retires_the_orphan() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    sn.prepare("a", "", &opt()).unwrap();
    let next = sn.snapshot("a").unwrap().id + 1;
    // What a crash after publish and before the commit leaves: the next id's tree. Even an
    // older retired orphan of that id is neither replaced nor merged into.
    for round in 0..3u64 {
        let orphan = sn.tree(Kind::Active, next + round);
        fs::create_dir_all(&orphan).unwrap();
        fs::write(orphan.join("old"), format!("orphan {round}")).unwrap();
        fs::create_dir_all(snapshots_dir(&sn).join(format!("rm-orphan-{}", next + round))).unwrap();
        let key = format!("k{round}");
        sn.prepare(&key, "", &opt()).unwrap();
        let s = sn.snapshot(&key).unwrap();
        assert_eq!(s.id, next + round);
        assert!(!sn.tree(Kind::Active, s.id).join("old").exists());
        let retired = names(&snapshots_dir(&sn))
            .into_iter()
            .filter(|n| n.starts_with(&format!("rm-orphan-{}", s.id)))
            .count();
        assert_eq!(
            retired, 2,
            "the older orphan stays, the new one is beside it"
        );
    }
    sn.cleanup().unwrap();
    assert!(names(&snapshots_dir(&sn))
        .iter()
        .all(|n| !n.starts_with("rm-")));
    assert_eq!(sn.check().unwrap(), 4);
}

#[test]
fn open_sweeps_orphans_restores_unfinished_removes_and_keeps_foreign_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sn = open(&root);
    let base = layer(&sn, "base", "", "b");
    sn.prepare("live", "base", &opt()).unwrap();
    let live = sn.snapshot("live").unwrap().id;
    sn.close().unwrap();
    drop(sn);
    let snaps = root.join("snapshots");
    // A remove killed between its rename and its commit: rm-<id> of a live record.
    fs::rename(
        snaps.join(live.to_string()),
        snaps.join(format!("rm-{live}")),
    )
    .unwrap();
    fs::create_dir_all(snaps.join("1000")).unwrap(); // a tree without a record
    fs::create_dir_all(snaps.join("new-1-1/deep")).unwrap(); // staging of a dead process
    fs::create_dir_all(snaps.join("rm-77")).unwrap(); // a remove that committed
    fs::create_dir_all(snaps.join("lost+found")).unwrap(); // not ours

    let sn = open(&root);
    assert_eq!(
        names(&snaps),
        vec![base.to_string(), live.to_string(), "lost+found".to_string()]
    );
    assert_eq!(
        fs::read_to_string(sn.tree(Kind::Active, live).join("data")).unwrap(),
        "b",
        "the restored tree is the snapshot's own"
    );
    assert_eq!(sn.check().unwrap(), 2);
}

#[test]
fn asynchronous_remove_waits_for_cleanup_and_synchronous_remove_does_not() {
    for async_remove in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            async_remove: Some(async_remove),
            ..Options::default()
        };
        let sn = open_with(tmp.path(), Dirs::default(), &options);
        assert_eq!(sn.async_remove(), async_remove);
        let id = layer(&sn, "base", "", "x");
        sn.remove("base").unwrap();
        assert_eq!(sn.stat("base").unwrap_err().kind(), ErrorKind::NotFound);
        let left = names(&snapshots_dir(&sn));
        if async_remove {
            assert_eq!(left, vec![format!("rm-{id}")]);
            sn.cleanup().unwrap();
        }
        assert!(names(&snapshots_dir(&sn)).is_empty(), "{async_remove}");
    }
    // The default is the backend's (Dirs keeps the trait's: synchronous).
    let tmp = tempfile::tempdir().unwrap();
    assert!(!open(tmp.path()).async_remove());
}

#[test]
fn a_refused_remove_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    let base = layer(&sn, "base", "", "x");
    sn.prepare("child", "base", &opt()).unwrap();
    let err = sn.remove("base").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(sn.tree(Kind::Committed, base).join("data").is_file());
    assert!(!snapshots_dir(&sn).join(format!("rm-{base}")).exists());
    assert_eq!(
        sn.remove("missing").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(sn.check().unwrap(), 2);
}

#[test]
fn commit_keeps_the_tree_in_place_or_freezes_it_apart() {
    for separate in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Dirs {
            separate,
            ..Dirs::default()
        };
        let sn = open_with(tmp.path(), storage, &Options::default());
        let id = layer(&sn, "base", "", "content");
        assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
        let committed = sn.tree(Kind::Committed, id);
        assert_eq!(
            fs::read_to_string(committed.join("data")).unwrap(),
            "content"
        );
        assert_eq!(
            sn.storage().freezes.load(Ordering::SeqCst),
            usize::from(separate)
        );
        if separate {
            assert!(
                !sn.tree(Kind::Active, id).exists(),
                "the active tree is deleted"
            );
            assert_eq!(names(&sn.root().join("committed")), vec![id.to_string()]);
        }
        // The next layer starts from the committed tree.
        sn.prepare("next", "base", &opt()).unwrap();
        let next = sn.snapshot("next").unwrap().id;
        assert_eq!(
            fs::read_to_string(sn.tree(Kind::Active, next).join("data")).unwrap(),
            "content"
        );
        assert_eq!(sn.usage("base").unwrap().inodes, 2, "the tree and data");
        assert_eq!(sn.check().unwrap(), 2);
    }
}

#[test]
fn a_commit_killed_after_freezing_leaves_the_active_tree_to_the_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let storage = Dirs {
        separate: true,
        ..Dirs::default()
    };
    let sn = open_with(&root, storage, &Options::default());
    let id = layer(&sn, "base", "", "x");
    sn.close().unwrap();
    drop(sn);
    // As if the process died before deleting the active tree.
    fs::create_dir_all(root.join(format!("snapshots/{id}"))).unwrap();
    let storage = Dirs {
        separate: true,
        ..Dirs::default()
    };
    let sn = open_with(&root, storage, &Options::default());
    assert!(names(&root.join("snapshots")).is_empty());
    assert_eq!(names(&root.join("committed")), vec![id.to_string()]);
    assert_eq!(sn.check().unwrap(), 1);
}

#[test]
fn rebase_is_refused_where_layers_are_full_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    layer(&sn, "base", "", "x");
    sn.prepare("a", "", &opt()).unwrap();
    let err = sn
        .commit(
            "c",
            "a",
            &CommitOptions {
                parent: "base".to_string(),
                ..CommitOptions::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotImplemented);
    assert!(
        err.to_string().contains("backend dirs cannot rebase"),
        "{err}"
    );
    assert_eq!(sn.stat("a").unwrap().kind, Kind::Active, "nothing changed");
    assert_eq!(sn.stat("c").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn the_sync_option_flushes_before_each_commit_and_only_then() {
    for sync in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            sync,
            ..Options::default()
        };
        let sn = open_with(tmp.path(), Dirs::default(), &options);
        layer(&sn, "one", "", "1");
        layer(&sn, "two", "one", "2");
        // A commit that must fail flushes nothing.
        let _ = sn.commit("two", "missing", &CommitOptions::default());
        assert_eq!(
            sn.storage().flushes.load(Ordering::SeqCst),
            if sync { 2 } else { 0 }
        );
    }
}

/// A Prepare copying its parent while another client removes the parent ends as if the
/// remove came first: NotFound for the parent, never Unknown, and nothing left behind.
#[test]
fn a_parent_removed_during_the_fill_ends_the_create_with_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = Arc::new(open(tmp.path()));
    layer(&sn, "base", "", "x");
    let gate = Arc::new(Barrier::new(2));
    *sn.storage().gate.lock().unwrap() = Some(gate.clone());
    let t = {
        let sn = sn.clone();
        std::thread::spawn(move || sn.prepare("child", "base", &opt()))
    };
    gate.wait(); // the fill has started
    sn.remove("base").unwrap();
    gate.wait(); // let it copy the parent, which is gone now
    let err = t.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("base"), "{err}");
    assert_eq!(sn.stat("child").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(
        names(&snapshots_dir(&sn)).is_empty(),
        "{:?}",
        names(&snapshots_dir(&sn))
    );
}

/// The parent removed and made again under the same name during the fill: the create
/// starts over on the new parent.
#[test]
fn a_parent_replaced_during_the_fill_makes_the_create_start_over() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = Arc::new(open(tmp.path()));
    layer(&sn, "base", "", "old");
    let gate = Arc::new(Barrier::new(2));
    *sn.storage().gate.lock().unwrap() = Some(gate.clone());
    let t = {
        let sn = sn.clone();
        std::thread::spawn(move || sn.prepare("child", "base", &opt()))
    };
    gate.wait();
    sn.remove("base").unwrap();
    layer(&sn, "base", "", "new");
    gate.wait();
    t.join().unwrap().unwrap();
    let id = sn.snapshot("child").unwrap().id;
    assert_eq!(
        fs::read_to_string(sn.tree(Kind::Active, id).join("data")).unwrap(),
        "new"
    );
    assert_eq!(sn.check().unwrap(), 2);
}

/// The metastore starts with a map far too small; every call still runs once and
/// succeeds while the map grows.
#[test]
fn a_tiny_map_grows_under_prepare_commit_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options {
        map_size: snapshot_testsuite::TINY_MAP,
        ..Options::default()
    };
    let sn = open_with(tmp.path(), Dirs::default(), &options);
    snapshot_testsuite::grow_a_tiny_map(&sn);
    assert!(
        sn.store().map_size().unwrap() > snapshot_testsuite::TINY_MAP,
        "the map grew"
    );
    assert_eq!(sn.check().unwrap(), 0);
    assert!(names(&snapshots_dir(&sn)).is_empty());
}

/// A live snapshot's tree left as `rm-<id>` (its restore failed) is never purged: the next
/// cleanup restores it instead.
#[test]
fn purge_never_deletes_the_tree_of_a_live_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open(tmp.path());
    let id = layer(&sn, "base", "", "keep me");
    let snaps = snapshots_dir(&sn);
    fs::rename(snaps.join(id.to_string()), snaps.join(format!("rm-{id}"))).unwrap();
    fs::create_dir(snaps.join("rm-999")).unwrap(); // a removed snapshot's: goes
    assert_eq!(sn.purge().unwrap(), 1);
    assert_eq!(names(&snaps), vec![format!("rm-{id}")]);
    sn.cleanup().unwrap();
    assert_eq!(
        fs::read_to_string(sn.tree(Kind::Committed, id).join("data")).unwrap(),
        "keep me"
    );
    assert_eq!(sn.check().unwrap(), 1);
}

fn open_with_blanks(root: &Path) -> Store {
    let storage = Dirs {
        blanks: true,
        ..Dirs::default()
    };
    open_with(root, storage, &Options::default())
}

/// The numeric entries of `dir` that no snapshot of `sn` records.
fn unrecorded(sn: &Store, dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = names(dir).iter().filter_map(|n| n.parse().ok()).collect();
    let mut recorded = Vec::new();
    sn.walk(&[], &mut |i| {
        recorded.push(sn.snapshot(&i.name).unwrap().id);
        Ok(())
    })
    .unwrap();
    ids.retain(|id| !recorded.contains(id));
    ids.sort_unstable();
    ids
}

#[test]
fn creates_take_durable_blank_trees_made_ahead_and_publish_nothing_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open_with_blanks(tmp.path());
    // The first create finds the pool empty: it builds its own tree and starts a refill.
    sn.prepare("first", "", &opt()).unwrap();
    let first = sn.snapshot("first").unwrap().id;
    let ready = sn.blank_trees();
    assert_eq!(ready.len(), 16, "one refill makes a batch");
    assert_eq!(unrecorded(&sn, &snapshots_dir(&sn)), ready);
    assert!(!ready.contains(&first));
    let synced_before = sn.storage().synced.lock().unwrap().clone();
    for id in &ready {
        let tree = sn.tree(Kind::Active, *id);
        assert_eq!(
            synced_before.iter().filter(|p| **p == tree).count(),
            1,
            "blank tree {id} is flushed once, before any create may take it"
        );
    }
    // A cleanup (its sweep) leaves the pool's trees alone.
    sn.cleanup().unwrap();
    assert_eq!(unrecorded(&sn, &snapshots_dir(&sn)), ready);

    // The next create records the oldest blank tree and flushes nothing itself.
    let mounts = sn.prepare("second", "", &opt()).unwrap();
    let second = sn.snapshot("second").unwrap().id;
    assert_eq!(second, ready[0]);
    assert_eq!(
        mounts[0].source,
        sn.tree(Kind::Active, second).to_string_lossy()
    );
    let synced = sn.storage().synced.lock().unwrap().clone();
    let tree = sn.tree(Kind::Active, second);
    assert_eq!(synced.iter().filter(|p| **p == tree).count(), 1);
    sn.check().unwrap();

    // On a parent whose layer has data the blank tree is adapted (here: the data copied)
    // and flushed again before the record commits.
    layer(&sn, "base", "", "base data");
    sn.prepare("child", "base", &opt()).unwrap();
    let child = sn.tree(Kind::Active, sn.snapshot("child").unwrap().id);
    assert_eq!(fs::read_to_string(child.join("data")).unwrap(), "base data");
    let synced = sn.storage().synced.lock().unwrap().clone();
    assert_eq!(synced.iter().filter(|p| **p == child).count(), 2);

    // Closing deletes the trees no create took; recorded ones stay.
    sn.close().unwrap();
    let root = sn.root().to_path_buf();
    drop(sn);
    let sn = open_with_blanks(&root);
    assert!(unrecorded(&sn, &snapshots_dir(&sn)).is_empty());
    assert!(sn.tree(Kind::Active, second).is_dir());
    sn.check().unwrap();
}

#[test]
fn blank_trees_left_by_a_crash_are_orphans_to_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let copy = tmp.path().join("copy");
    let sn = open_with_blanks(&root);
    sn.prepare("a", "", &opt()).unwrap();
    let ready = sn.blank_trees();
    assert!(!ready.is_empty());
    // What a power cut or SIGKILL leaves: the pool's trees without records.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&root)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    drop(sn);
    fs::remove_file(copy.join("lock")).ok();
    let sn = open_with_blanks(&copy);
    assert!(
        unrecorded(&sn, &snapshots_dir(&sn)).is_empty(),
        "the open's sweep retired them: {:?}",
        names(&snapshots_dir(&sn))
    );
    // New creates get fresh trees, never one of the crashed pool's: its ids were
    // persisted before any tree was named after one.
    sn.prepare("b", "", &opt()).unwrap();
    let b = sn.snapshot("b").unwrap().id;
    assert!(
        b > *ready.iter().max().unwrap(),
        "{b} reuses an id of {ready:?}"
    );
    sn.prepare("c", "", &opt()).unwrap();
    sn.check().unwrap();
    sn.cleanup().unwrap();
    assert!(names(&snapshots_dir(&sn))
        .iter()
        .all(|n| !n.starts_with("rm-")));
}

#[test]
fn close_returns_only_once_the_pool_has_deleted_its_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let sn = open_with_blanks(&root);
    let gate = Arc::new(Barrier::new(2));
    *sn.storage().blank_gate.lock().unwrap() = Some(gate.clone());
    sn.prepare("a", "", &opt()).unwrap();
    let a = sn.snapshot("a").unwrap().id;
    // The refill is inside its first fill, ids reserved.
    gate.wait();
    std::thread::scope(|s| {
        let closer = s.spawn(|| sn.close());
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!closer.is_finished(), "close waits for the refill");
        gate.wait();
        closer.join().unwrap().unwrap();
    });
    // Nothing of the pool is left, and nothing deletes anything any more.
    assert_eq!(names(&root.join("snapshots")), vec![a.to_string()]);
    drop(sn);
    let sn = open_with_blanks(&root);
    for i in 0..20 {
        sn.prepare(&format!("after-{i}"), "", &opt()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    for i in 0..20 {
        let id = sn.snapshot(&format!("after-{i}")).unwrap().id;
        assert!(
            sn.tree(Kind::Active, id).is_dir(),
            "after-{i} lost its tree"
        );
    }
    sn.check().unwrap();
}

#[test]
fn a_refill_that_panics_leaves_the_store_working_and_closable() {
    let tmp = tempfile::tempdir().unwrap();
    let sn = open_with_blanks(tmp.path());
    sn.storage().panic_blank.store(true, Ordering::SeqCst);
    sn.prepare("a", "", &opt()).unwrap();
    // The panicked refill let its ids go: waiting on the pool returns.
    assert!(sn.blank_trees().is_empty());
    // The next create starts another refill, which works.
    sn.prepare("b", "", &opt()).unwrap();
    assert_eq!(sn.blank_trees().len(), 16);
    sn.cleanup().unwrap();
    assert_eq!(
        unrecorded(&sn, &snapshots_dir(&sn)),
        sn.blank_trees(),
        "the panicked refill's tree was swept, the new pool's were not"
    );
    sn.close().unwrap();
}
