//! The on-disk layout and its crash-safe steps: staging, publish (also onto an orphan a
//! crash left), retire and restore, the orphan sweep and purging.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use snapshot_core::layout::{rename_noreplace, Layout};
use snapshot_core::metastore::{MetaStore, StoreOptions};
use snapshot_core::{Kind, Labels};

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

#[test]
fn new_creates_private_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a/b/root");
    let layout = Layout::new(&root).unwrap();
    assert_eq!(layout.root(), root);
    assert_eq!(layout.snapshots_dir(), root.join("snapshots"));
    assert_eq!(layout.metadata_dir(), root.join("metadata"));
    assert_eq!(layout.snapshot_dir(42), root.join("snapshots/42"));
    assert_eq!(layout.retired_dir(42), root.join("snapshots/rm-42"));
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("snapshots")), 0o700);
    // One owner at a time: a second layout on the root is refused, naming the holder.
    let err = Layout::new(&root).unwrap_err();
    assert_eq!(err.kind(), snapshot_core::ErrorKind::Unavailable);
    let msg = err.to_string();
    assert!(msg.contains(root.to_str().unwrap()), "{msg}");
    assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    // Unlocked (at close) or dropped, the root opens again.
    layout.unlock();
    let again = Layout::new(&root).unwrap();
    drop(again);
    drop(layout);
    Layout::new(&root).unwrap();
}

#[test]
fn staging_is_deleted_unless_published() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path()).unwrap();
    let staged = layout.stage().unwrap();
    let path = staged.path().to_path_buf();
    assert!(path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("new-"));
    assert_eq!(mode(&path), 0o700);
    fs::create_dir(path.join("fs")).unwrap();
    fs::write(path.join("fs/file"), "x").unwrap();
    drop(staged);
    assert!(!path.exists(), "a dropped staging directory is deleted");

    let mut staged = layout.stage().unwrap();
    let other = layout.stage().unwrap();
    assert_ne!(
        staged.path(),
        other.path(),
        "each create has its own staging directory"
    );
    fs::write(staged.path().join("marker"), "m").unwrap();
    let dst = layout.publish(&mut staged, 7).unwrap();
    assert_eq!(dst, layout.snapshot_dir(7));
    drop(staged);
    assert_eq!(
        fs::read_to_string(dst.join("marker")).unwrap(),
        "m",
        "published stays"
    );
    layout.unpublish(7);
    assert!(!dst.exists());
    layout.unpublish(7); // gone already: fine
}

#[test]
fn publish_onto_an_orphan_retires_it() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path()).unwrap();
    let snaps = layout.snapshots_dir().to_path_buf();
    // An id handed out before a crash left <id>; even an older retired orphan of that id
    // is neither replaced nor merged into.
    for round in 0..3 {
        fs::create_dir_all(snaps.join("5/fs")).unwrap();
        fs::write(snaps.join("5/fs/old"), format!("orphan {round}")).unwrap();
        let mut staged = layout.stage().unwrap();
        fs::write(staged.path().join("new"), "fresh").unwrap();
        layout.publish(&mut staged, 5).unwrap();
        assert!(snaps.join("5/new").exists());
        assert!(!snaps.join("5/fs").exists());
        let retired: Vec<String> = names(&snaps)
            .into_iter()
            .filter(|n| n.starts_with("rm-orphan-5"))
            .collect();
        assert_eq!(retired.len(), round + 1, "{retired:?}");
        fs::remove_dir_all(snaps.join("5")).unwrap();
    }
    assert_eq!(layout.purge().unwrap(), 3);
    assert!(names(&snaps).is_empty(), "{:?}", names(&snaps));
}

#[test]
fn retire_restore_and_purge_one() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path()).unwrap();
    fs::create_dir_all(layout.snapshot_dir(3).join("fs/deep/er")).unwrap();
    layout.retire(3).unwrap();
    assert!(!layout.snapshot_dir(3).exists());
    assert!(layout.retired_dir(3).join("fs/deep/er").exists());
    layout.restore(3);
    assert!(layout.snapshot_dir(3).join("fs/deep/er").exists());
    layout.restore(3); // nothing retired: fine
    layout.retire(3).unwrap();
    layout.purge_one(3).unwrap();
    assert!(!layout.retired_dir(3).exists());
    layout.purge_one(3).unwrap(); // gone already: fine
    layout.retire(99).unwrap(); // no directory: fine
}

#[test]
fn orphan_sweep_keeps_live_ids_and_owned_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path()).unwrap();
    let store = MetaStore::open(&layout.metadata_dir(), &StoreOptions::default()).unwrap();
    let live = store
        .write(|tx| tx.create(Kind::Active, "live", "", &Labels::new()))
        .unwrap();
    let snaps = layout.snapshots_dir().to_path_buf();
    fs::create_dir_all(layout.snapshot_dir(live.id).join("fs")).unwrap();
    fs::create_dir_all(snaps.join("1000/fs")).unwrap(); // not in the store
    fs::create_dir_all(snaps.join("new-1-1")).unwrap(); // staging of a dead process
    fs::create_dir_all(snaps.join("rm-77")).unwrap(); // waiting for purge
    fs::create_dir_all(snaps.join("rm-orphan-1000")).unwrap(); // an older orphan of 1000
    fs::write(snaps.join("rm-orphan-1000/keep"), "older").unwrap();
    fs::create_dir_all(snaps.join("lost+found")).unwrap(); // not ours: left alone
    let owned = layout.stage().unwrap();
    let owned_name = owned
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let n = store.write(|tx| layout.retire_orphans(tx)).unwrap();
    assert_eq!(n, 2);
    let after = names(&snaps);
    assert!(after.contains(&live.id.to_string()), "{after:?}");
    assert!(after.contains(&owned_name), "{after:?}");
    assert!(after.contains(&"lost+found".to_string()));
    assert!(!after.contains(&"1000".to_string()) && !after.contains(&"new-1-1".to_string()));
    assert!(
        after.contains(&"rm-orphan-new-1-1".to_string()),
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|n| n.starts_with("rm-orphan-1000"))
            .count(),
        2
    );
    assert_eq!(
        fs::read_to_string(snaps.join("rm-orphan-1000/keep")).unwrap(),
        "older"
    );

    assert_eq!(layout.purge().unwrap(), 4);
    let mut want = vec![
        live.id.to_string(),
        owned_name.clone(),
        "lost+found".to_string(),
    ];
    want.sort();
    assert_eq!(names(&snaps), want);
    // Once the create is over (dropped without publish), the sweep has nothing to do.
    drop(owned);
    assert_eq!(store.write(|tx| layout.retire_orphans(tx)).unwrap(), 0);
    store.close().unwrap();
}

#[test]
fn rename_noreplace_never_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap(); // empty: rename(2) would replace it
    let e = rename_noreplace(&a, &b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    rename_noreplace(&a, &tmp.path().join("c")).unwrap();
    assert!(!a.exists());
}

/// Creates a published snapshot `key` on `parent` and returns its id.
fn published(layout: &Layout, store: &MetaStore, key: &str, parent: &str) -> u64 {
    let mut staged = layout.stage().unwrap();
    store
        .write(|tx| {
            let s = tx.create(Kind::Active, key, parent, &Labels::new())?;
            layout.publish(&mut staged, s.id)?;
            Ok(s.id)
        })
        .unwrap()
}

#[test]
fn remove_snapshot_retires_then_purges_or_restores() {
    use snapshot_core::metastore::Reader;
    use snapshot_core::{CommitOptions, ErrorKind, Usage};
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path()).unwrap();
    let store = MetaStore::open(&layout.metadata_dir(), &StoreOptions::default()).unwrap();
    let base = published(&layout, &store, "a", "");
    store
        .write(|tx| tx.commit_active("a", "base", Usage::default(), &CommitOptions::default()))
        .unwrap();
    let child = published(&layout, &store, "child", "base");

    // Refused: the directory is back where it was and the snapshot is intact.
    let err = layout.remove_snapshot(&store, "base", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(layout.snapshot_dir(base).is_dir());
    assert!(!layout.retired_dir(base).exists());
    let err = layout.remove_snapshot(&store, "missing", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // Deferred: the tree waits as rm-<id> until a purge.
    assert_eq!(
        layout.remove_snapshot(&store, "child", false).unwrap(),
        (child, Kind::Active)
    );
    assert!(layout.retired_dir(child).is_dir());
    assert_eq!(layout.purge().unwrap(), 1);
    assert!(!layout.retired_dir(child).exists());

    // Synchronous: nothing is left.
    assert_eq!(
        layout.remove_snapshot(&store, "base", true).unwrap(),
        (base, Kind::Committed)
    );
    assert_eq!(names(layout.snapshots_dir()), Vec::<String>::new());
    assert_eq!(store.read(|tx| tx.check()).unwrap(), 0);
}
