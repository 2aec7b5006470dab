//! Conformance of the LMDB metastore with DESIGN.md section 3: every error kind the store
//! decides, the commit and update rules of containerd's `snapshots/storage`, walks,
//! persistence, concurrency and map growth. Every test ends with the consistency check.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use snapshot_core::metastore::{MetaStore, Reader, Snapshot, StoreOptions, WALK_BATCH};
use snapshot_core::{labels, CommitOptions, ErrorKind, Info, Kind, Labels, Result, Usage};
use tempfile::TempDir;

struct Store {
    store: MetaStore,
    dir: TempDir,
}

impl std::ops::Deref for Store {
    type Target = MetaStore;
    fn deref(&self) -> &MetaStore {
        &self.store
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Every scenario must leave a consistent store (unless it closed it).
        if std::thread::panicking() {
            return;
        }
        if let Ok(n) = self.store.read(|tx| tx.check()) {
            let walked = walk_names(&self.store, &[]).len();
            assert_eq!(n, walked, "check counts what walk sees");
        }
    }
}

fn open() -> Store {
    open_with(&StoreOptions::default())
}

fn open_with(opts: &StoreOptions) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(&dir.path().join("metadata"), opts).unwrap();
    Store { store, dir }
}

fn kind_of<T: Debug>(r: Result<T>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

fn err_of<T: Debug>(r: Result<T>) -> snapshot_core::Error {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

fn create(s: &MetaStore, kind: Kind, key: &str, parent: &str) -> Result<Snapshot> {
    s.write(|tx| tx.create(kind, key, parent, &Labels::new()))
}

fn create_l(s: &MetaStore, kind: Kind, key: &str, parent: &str, l: &Labels) -> Result<Snapshot> {
    s.write(|tx| tx.create(kind, key, parent, l))
}

fn prepare(s: &MetaStore, key: &str, parent: &str) -> Snapshot {
    create(s, Kind::Active, key, parent).unwrap()
}

fn commit(s: &MetaStore, name: &str, key: &str) -> Result<u64> {
    s.write(|tx| tx.commit_active(key, name, Usage::default(), &CommitOptions::default()))
}

fn commit_with(s: &MetaStore, name: &str, key: &str, opts: &CommitOptions) -> Result<u64> {
    s.write(|tx| tx.commit_active(key, name, Usage::default(), opts))
}

/// Prepares `name-tmp` on `parent` and commits it as `name`.
fn committed(s: &MetaStore, name: &str, parent: &str) -> u64 {
    let tmp = format!("{name}-tmp");
    prepare(s, &tmp, parent);
    commit(s, name, &tmp).unwrap()
}

fn stat(s: &MetaStore, key: &str) -> Result<Info> {
    s.read(|tx| tx.info(key))
}

fn remove(s: &MetaStore, key: &str) -> Result<(u64, Kind)> {
    s.write(|tx| tx.remove(key))
}

fn update(s: &MetaStore, info: &Info, paths: &[&str]) -> Result<Info> {
    s.write(|tx| tx.update_info(info, paths))
}

fn walk_names(s: &MetaStore, filters: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    s.walk(filters, |i| {
        out.push(i.name.clone());
        Ok(())
    })
    .unwrap();
    out.sort();
    out
}

fn check(s: &MetaStore) -> usize {
    s.read(|tx| tx.check()).unwrap()
}

// ---- Create (Prepare / View) -------------------------------------------------------

#[test]
fn create_missing_parent_is_not_found() {
    let s = open();
    for kind in [Kind::Active, Kind::View] {
        let e = err_of(create(&s, kind, "k", "missing"));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("\"missing\""), "{e}");
    }
    assert_eq!(check(&s), 0);
}

#[test]
fn create_on_uncommitted_parent_is_invalid_argument() {
    let s = open();
    prepare(&s, "active", "");
    committed(&s, "base", "");
    create(&s, Kind::View, "view", "base").unwrap();
    for parent in ["active", "view"] {
        for kind in [Kind::Active, Kind::View] {
            let e = err_of(create(&s, kind, "k", parent));
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{parent}: {e}");
            assert!(e.message().contains(parent), "{e}");
        }
    }
    assert_eq!(check(&s), 3);
}

#[test]
fn duplicate_keys_are_already_exists() {
    let s = open();
    committed(&s, "base", "");
    prepare(&s, "active", "");
    create(&s, Kind::View, "view", "base").unwrap();
    // Every kind occupies the one keyspace, with or without a parent.
    for key in ["active", "view", "base"] {
        for kind in [Kind::Active, Kind::View] {
            for parent in ["", "base"] {
                let e = err_of(create(&s, kind, key, parent));
                assert_eq!(
                    e.kind(),
                    ErrorKind::AlreadyExists,
                    "{kind:?} {key} on {parent:?}"
                );
                assert!(e.message().contains(key), "{e}");
            }
        }
    }
    // Prepare then View with the same key (testsuite checkPrepareViewFailing), and back.
    prepare(&s, "pv", "base");
    assert_eq!(
        kind_of(create(&s, Kind::View, "pv", "base")),
        ErrorKind::AlreadyExists
    );
    create(&s, Kind::View, "vp", "base").unwrap();
    assert_eq!(
        kind_of(create(&s, Kind::Active, "vp", "base")),
        ErrorKind::AlreadyExists
    );
    assert_eq!(check(&s), 5);
}

#[test]
fn parent_is_checked_before_the_key() {
    let s = open();
    prepare(&s, "k", "");
    prepare(&s, "active", "");
    assert_eq!(
        kind_of(create(&s, Kind::Active, "k", "missing")),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind_of(create(&s, Kind::View, "k", "active")),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn bad_keys_and_labels_are_invalid_argument() {
    let s = open();
    committed(&s, "base", "");
    let cases: Vec<(Kind, String, String, Labels)> = vec![
        (Kind::Active, String::new(), String::new(), Labels::new()),
        (Kind::View, String::new(), "base".into(), Labels::new()),
        (Kind::Active, "a\0b".into(), String::new(), Labels::new()),
        (Kind::View, "k".into(), "ba\0se".into(), Labels::new()),
        (
            Kind::Active,
            "k".into(),
            String::new(),
            labels([("l", "v".repeat(4096))]),
        ),
        (
            Kind::Active,
            "k".into(),
            String::new(),
            labels([("x".repeat(4000), "y".repeat(97))]),
        ),
        (Kind::Active, "k".into(), String::new(), labels([("", "v")])),
        (Kind::Committed, "k".into(), String::new(), Labels::new()),
        (Kind::Committed, "k".into(), "base".into(), Labels::new()),
    ];
    for (kind, key, parent, l) in &cases {
        let e = err_of(create_l(&s, *kind, key, parent, l));
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "{kind:?} {key:?} {parent:?}: {e}"
        );
    }
    // Exactly 4096 bytes of key plus value is allowed.
    let l = labels([("x".repeat(4000), "y".repeat(96))]);
    create_l(&s, Kind::Active, "k", "", &l).unwrap();
    assert_eq!(stat(&s, "k").unwrap().labels, l);
    assert_eq!(check(&s), 2);
}

#[test]
fn created_equals_updated_at_creation() {
    let s = open();
    let t1 = SystemTime::now();
    committed(&s, "base", "");
    prepare(&s, "a", "base");
    create(&s, Kind::View, "v", "").unwrap();
    let t2 = SystemTime::now();
    for key in ["base", "a", "v"] {
        let i = stat(&s, key).unwrap();
        assert_eq!(i.created, i.updated, "{key}");
        assert!(i.created >= t1 && i.created <= t2, "{key}");
        assert_eq!(i.name, key);
    }
    let a = stat(&s, "a").unwrap();
    assert_eq!((a.kind, a.parent.as_str()), (Kind::Active, "base"));
    let v = stat(&s, "v").unwrap();
    assert_eq!((v.kind, v.parent.as_str()), (Kind::View, ""));
}

#[test]
fn labels_with_empty_values_are_not_stored() {
    // containerd's WriteLabels drops empty values on create, commit and update.
    let s = open();
    let l = labels([("keep", "1"), ("drop", "")]);
    create_l(&s, Kind::Active, "a", "", &l).unwrap();
    assert_eq!(stat(&s, "a").unwrap().labels, labels([("keep", "1")]));
    commit_with(&s, "c", "a", &CommitOptions::with_labels(l.clone())).unwrap();
    assert_eq!(stat(&s, "c").unwrap().labels, labels([("keep", "1")]));
    let mut info = stat(&s, "c").unwrap();
    info.labels = labels([("x", ""), ("y", "2")]);
    assert_eq!(update(&s, &info, &[]).unwrap().labels, labels([("y", "2")]));
    assert_eq!(
        update(&s, &info, &["labels"]).unwrap().labels,
        labels([("y", "2")])
    );
    assert_eq!(stat(&s, "c").unwrap().labels, labels([("y", "2")]));
}

// ---- Stat and lookups ----------------------------------------------------------------

#[test]
fn lookups_of_missing_keys_are_not_found() {
    let s = open();
    committed(&s, "base", "");
    for key in ["missing", "base-tmp", "", "ba\0se"] {
        assert_eq!(kind_of(stat(&s, key)), ErrorKind::NotFound, "{key:?}");
        assert_eq!(kind_of(s.read(|tx| tx.snapshot(key))), ErrorKind::NotFound);
        assert_eq!(
            kind_of(s.read(|tx| tx.stored_usage(key))),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of(s.read(|tx| tx.id_and_info(key))),
            ErrorKind::NotFound
        );
    }
    let e = err_of(stat(&s, "missing"));
    assert_eq!(e.to_string(), "snapshot \"missing\": not found");
}

#[test]
fn parent_ids_are_nearest_first() {
    let s = open();
    let mut ids = Vec::new();
    let mut parent = String::new();
    for i in 0..5 {
        let name = format!("layer-{i}");
        ids.push(committed(&s, &name, &parent));
        parent = name;
    }
    let top = prepare(&s, "top", "layer-4");
    let want: Vec<u64> = ids.iter().rev().copied().collect();
    assert_eq!(top.parent_ids, want);
    assert_eq!(s.read(|tx| tx.snapshot("top")).unwrap().parent_ids, want);
    let l2 = s.read(|tx| tx.snapshot("layer-2")).unwrap();
    assert_eq!(l2.parent_ids, vec![ids[1], ids[0]]);
    assert_eq!(l2.kind, Kind::Committed);
    assert_eq!(stat(&s, "layer-0").unwrap().parent, "");
    assert_eq!(stat(&s, "layer-3").unwrap().parent, "layer-2");
    // Transitivity: the parent of the parent... ends at the root with "".
    let mut cur = stat(&s, "top").unwrap();
    let mut chain = vec![];
    while !cur.parent.is_empty() {
        chain.push(cur.parent.clone());
        cur = stat(&s, &cur.parent).unwrap();
    }
    assert_eq!(
        chain,
        ["layer-4", "layer-3", "layer-2", "layer-1", "layer-0"]
    );
    assert_eq!(check(&s), 6);
}

// ---- Commit ----------------------------------------------------------------------------

#[test]
fn commit_errors() {
    let s = open();
    committed(&s, "base", "");
    prepare(&s, "active", "base");
    create(&s, Kind::View, "view", "base").unwrap();

    // An existing name is AlreadyExists, checked before the key: even for a missing key.
    for name in ["base", "active", "view"] {
        assert_eq!(
            kind_of(commit(&s, name, "missing")),
            ErrorKind::AlreadyExists,
            "{name}"
        );
        assert_eq!(
            kind_of(commit(&s, name, "active")),
            ErrorKind::AlreadyExists,
            "{name}"
        );
        assert_eq!(
            kind_of(commit(&s, name, "view")),
            ErrorKind::AlreadyExists,
            "{name}"
        );
    }
    let e = err_of(commit(&s, "new", "missing"));
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("missing"), "{e}");
    // A view, or a committed snapshot, is not active.
    let e = err_of(commit(&s, "new", "view"));
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.message().contains("\"view\""), "{e}");
    assert_eq!(
        kind_of(commit(&s, "new", "base")),
        ErrorKind::FailedPrecondition
    );
    // Bad names, keys and labels.
    assert_eq!(
        kind_of(commit(&s, "", "active")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of(commit(&s, "n\0ame", "active")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind_of(commit(&s, "new", "")), ErrorKind::InvalidArgument);
    assert_eq!(
        kind_of(commit(&s, "new", "act\0ive")),
        ErrorKind::InvalidArgument
    );
    let big = CommitOptions::with_labels(labels([("l", "v".repeat(4096))]));
    assert_eq!(
        kind_of(commit_with(&s, "new", "active", &big)),
        ErrorKind::InvalidArgument
    );
    // Nothing changed.
    assert_eq!(stat(&s, "active").unwrap().kind, Kind::Active);
    assert_eq!(kind_of(stat(&s, "new")), ErrorKind::NotFound);
    assert_eq!(check(&s), 3);
}

#[test]
fn commit_keeps_id_and_parent_replaces_labels_resets_times_stores_usage() {
    let s = open();
    committed(&s, "base", "");
    let act_labels = labels([("from-active", "1"), ("shared", "a")]);
    let a = create_l(&s, Kind::Active, "active", "base", &act_labels).unwrap();
    let before = stat(&s, "active").unwrap();
    assert_eq!(
        s.read(|tx| tx.stored_usage("active")).unwrap(),
        (Kind::Active, Usage::default())
    );
    std::thread::sleep(Duration::from_millis(5));
    let usage = Usage {
        size: 123 * 4096,
        inodes: 77,
    };
    let opts = CommitOptions::with_labels(labels([("shared", "b"), ("from-commit", "2")]));
    let t1 = SystemTime::now();
    let id = s
        .write(|tx| tx.commit_active("active", "layer", usage, &opts))
        .unwrap();
    let t2 = SystemTime::now();
    assert_eq!(id, a.id, "commit keeps the id");
    let c = s.read(|tx| tx.snapshot("layer")).unwrap();
    assert_eq!(
        (c.id, c.kind, c.parent_ids.clone()),
        (a.id, Kind::Committed, a.parent_ids)
    );
    let info = stat(&s, "layer").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.name, "layer");
    assert_eq!(info.parent, "base");
    assert_eq!(
        info.labels, opts.labels,
        "labels are replaced, not inherited"
    );
    assert_eq!(info.created, info.updated);
    assert!(info.created > before.created && info.created >= t1 && info.created <= t2);
    assert_eq!(
        s.read(|tx| tx.stored_usage("layer")).unwrap(),
        (Kind::Committed, usage)
    );
    // The key is gone and free; the parent now has the committed child.
    assert_eq!(kind_of(stat(&s, "active")), ErrorKind::NotFound);
    let base = s.read(|tx| tx.snapshot("base")).unwrap();
    assert!(s.read(|tx| tx.has_children(base.id)).unwrap());
    assert_eq!(kind_of(remove(&s, "base")), ErrorKind::FailedPrecondition);
    // A committed snapshot is a parent.
    let child = prepare(&s, "child", "layer");
    assert_eq!(child.parent_ids, vec![a.id, base.id]);
    assert_eq!(check(&s), 3);
}

#[test]
fn commit_frees_the_key_for_reuse() {
    // containerd's checkRemove, step by step.
    let s = open();
    prepare(&s, "committed-a", "");
    commit(&s, "committed-1", "committed-a").unwrap();
    prepare(&s, "reuse-1", "committed-1");
    remove(&s, "reuse-1").unwrap();
    create(&s, Kind::View, "reuse-1", "committed-1").unwrap();
    remove(&s, "reuse-1").unwrap();
    prepare(&s, "reuse-1", "");
    remove(&s, "committed-1").unwrap();
    commit(&s, "committed-1", "reuse-1").unwrap();
    assert_eq!(stat(&s, "committed-1").unwrap().parent, "");
    // The committed key is reusable at once too.
    prepare(&s, "committed-a", "committed-1");
    commit(&s, "again", "committed-a").unwrap();
    prepare(&s, "committed-a", "again");
    assert_eq!(stat(&s, "committed-a").unwrap().parent, "again");
    assert_eq!(check(&s), 3);
}

#[test]
fn rebase_on_commit() {
    let s = open();
    let p = committed(&s, "p", "");
    let q = committed(&s, "q", "p");
    prepare(&s, "orphan", "");
    let rebase = |parent: &str| CommitOptions {
        labels: Labels::new(),
        parent: parent.into(),
    };
    // Rebase parent missing, not committed, or malformed.
    prepare(&s, "other-active", "");
    assert_eq!(
        kind_of(commit_with(&s, "x", "orphan", &rebase("missing"))),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind_of(commit_with(&s, "x", "orphan", &rebase("other-active"))),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind_of(commit_with(&s, "x", "orphan", &rebase("orphan"))),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind_of(commit_with(&s, "x", "orphan", &rebase("q\0"))),
        ErrorKind::InvalidArgument
    );
    // A parentless snapshot adopts the parent, with its whole chain.
    let id = commit_with(&s, "x", "orphan", &rebase("q")).unwrap();
    let x = s.read(|tx| tx.snapshot("x")).unwrap();
    assert_eq!(x.parent_ids, vec![q, p]);
    assert_eq!(stat(&s, "x").unwrap().parent, "q");
    assert_eq!(kind_of(remove(&s, "q")), ErrorKind::FailedPrecondition);
    assert!(s.read(|tx| tx.has_children(q)).unwrap());
    // A different parent is InvalidArgument; the same one is fine.
    prepare(&s, "on-p", "p");
    let e = err_of(commit_with(&s, "y", "on-p", &rebase("q")));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("on-p"), "{e}");
    commit_with(&s, "y", "on-p", &rebase("p")).unwrap();
    assert_eq!(stat(&s, "y").unwrap().parent, "p");
    // Removing the rebased child frees the parent again.
    remove(&s, "x").unwrap();
    assert!(!s.read(|tx| tx.has_children(q)).unwrap());
    remove(&s, "q").unwrap();
    assert!(!s.read(|tx| tx.has_id(id)).unwrap());
    assert_eq!(check(&s), 3);
}

// ---- Remove ------------------------------------------------------------------------------

#[test]
fn remove_rules() {
    let s = open();
    assert_eq!(kind_of(remove(&s, "missing")), ErrorKind::NotFound);
    let root = committed(&s, "root", "");
    committed(&s, "mid", "root");
    prepare(&s, "active", "mid");
    create(&s, Kind::View, "view", "mid").unwrap();
    // Children of every kind keep a parent.
    let e = err_of(remove(&s, "root"));
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.message().contains("\"root\""), "{e}");
    assert_eq!(kind_of(remove(&s, "mid")), ErrorKind::FailedPrecondition);
    assert_eq!(remove(&s, "active").unwrap().1, Kind::Active);
    assert_eq!(
        kind_of(remove(&s, "mid")),
        ErrorKind::FailedPrecondition,
        "the view remains"
    );
    assert_eq!(remove(&s, "view").unwrap().1, Kind::View);
    assert_eq!(
        kind_of(remove(&s, "root")),
        ErrorKind::FailedPrecondition,
        "mid remains"
    );
    assert_eq!(remove(&s, "mid").unwrap().1, Kind::Committed);
    assert_eq!(remove(&s, "root").unwrap(), (root, Kind::Committed));
    assert_eq!(kind_of(remove(&s, "root")), ErrorKind::NotFound);
    assert!(!s.read(|tx| tx.has_id(root)).unwrap());
    assert!(s.read(|tx| tx.id_map()).unwrap().is_empty());
    assert_eq!(check(&s), 0);
}

// ---- Update --------------------------------------------------------------------------------

#[test]
fn update_field_paths_as_containerd_check_update() {
    let s = open();
    let t1 = SystemTime::now();
    // baseTestSnapshots
    prepare(&s, "c1-a", "");
    commit(&s, "c1", "c1-a").unwrap();
    prepare(&s, "c2-a", "c1");
    commit(&s, "c2", "c2-a").unwrap();
    prepare(&s, "a1", "c2");
    prepare(&s, "a2", "");
    create(&s, Kind::View, "v1", "c2").unwrap();
    create(&s, Kind::View, "v2", "").unwrap();
    let t2 = SystemTime::now();
    let cases = [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ];
    for (name, kind, parent) in cases {
        let mut st = stat(&s, name).unwrap();
        assert!(st.created >= t1 && st.created <= t2);
        assert_eq!(st.created, st.updated);
        assert_eq!(
            (st.kind, st.parent.as_str(), st.name.as_str()),
            (kind, parent, name)
        );
        let created = st.created;
        let root_time = format!("{:?}", SystemTime::now());
        let expected = labels([
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root_time.as_str()),
        ]);
        // Immutable fields in the argument are ignored.
        st.parent = "doesnotexist".into();
        st.kind = if kind == Kind::Active {
            Kind::View
        } else {
            Kind::Active
        };
        st.created = SystemTime::UNIX_EPOCH;
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let st = update(&s, &st, &[]).unwrap();
        let u2 = SystemTime::now();
        assert_eq!(st.created, created, "{name}");
        assert!(st.updated >= u1 && st.updated <= u2, "{name}");
        assert_eq!(
            (st.kind, st.parent.as_str(), st.name.as_str()),
            (kind, parent, name)
        );
        assert_eq!(st.labels, expected);
        assert_eq!(
            stat(&s, name).unwrap(),
            st,
            "update returns what stat reads"
        );

        let mut st2 = st.clone();
        st2.labels = labels([("l1", "updated"), ("l4", "v4")]);
        let st = update(&s, &st2, &["labels.l1", "labels.l2"]).unwrap();
        assert_eq!(
            st.labels,
            labels([
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", root_time.as_str())
            ])
        );

        let mut st3 = st.clone();
        st3.labels = labels([("l4", "v4"), ("containerd.io/gc.root", root_time.as_str())]);
        let st = update(&s, &st3, &["labels"]).unwrap();
        assert_eq!(st.labels, st3.labels);

        // An immutable field path is InvalidArgument, and nothing changes.
        let mut bad = st.clone();
        bad.parent = "doesnotexist".into();
        bad.labels = labels([("l9", "v9")]);
        for path in [
            "parent", "name", "kind", "created", "updated", "label", "labels.", "Labels",
        ] {
            let paths: &[&str] = if path == "labels." {
                &["labels.l9", "parent"]
            } else {
                &[path]
            };
            let e = err_of(update(&s, &bad, paths));
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{path}");
            assert!(e.message().contains(name), "{e}");
        }
        assert_eq!(stat(&s, name).unwrap(), st);
    }
    // "labels.<k>" with an empty or absent value deletes the label; the key may hold dots.
    let mut info = stat(&s, "a2").unwrap();
    info.labels = labels([("a.b/c", "x"), ("l4", "")]);
    let got = update(
        &s,
        &info,
        &["labels.a.b/c", "labels.l4", "labels.containerd.io/gc.root"],
    )
    .unwrap();
    assert_eq!(got.labels, labels([("a.b/c", "x")]));
    // A label over the limit is InvalidArgument.
    info.labels = labels([("big", "v".repeat(4094))]);
    assert_eq!(
        kind_of(update(&s, &info, &["labels.big"])),
        ErrorKind::InvalidArgument
    );
    // Missing snapshots are NotFound.
    for name in ["missing", "c1-a", ""] {
        let info = Info::new(Kind::Active, name);
        assert_eq!(
            kind_of(update(&s, &info, &[])),
            ErrorKind::NotFound,
            "{name:?}"
        );
        assert_eq!(
            kind_of(update(&s, &info, &["parent"])),
            ErrorKind::NotFound,
            "{name:?}"
        );
    }
    assert_eq!(check(&s), 6);
}

// ---- Walk ------------------------------------------------------------------------------------

/// checkWalk's snapshots (containerd snapshots/testsuite/testsuite.go).
fn check_walk_store(s: &MetaStore) {
    let gc = labels([("containerd.io/gc.root", "check-walk")]);
    let with_l = |v: &str| {
        let mut l = gc.clone();
        l.insert("l".into(), v.into());
        l
    };
    create_l(s, Kind::Active, "a-np", "", &gc).unwrap();
    create_l(s, Kind::Active, "p-tmp", "", &gc).unwrap();
    commit_with(s, "p", "p-tmp", &CommitOptions::with_labels(gc.clone())).unwrap();
    create_l(s, Kind::Active, "a", "p", &gc).unwrap();
    create_l(s, Kind::View, "v", "p", &gc).unwrap();
    create_l(s, Kind::Active, "p-wl-tmp", "", &gc).unwrap();
    commit_with(
        s,
        "p-wl",
        "p-wl-tmp",
        &CommitOptions::with_labels(with_l("1")),
    )
    .unwrap();
    create_l(s, Kind::Active, "a-wl", "p-wl", &with_l("2")).unwrap();
    create_l(s, Kind::View, "v-wl", "p-wl", &with_l("3")).unwrap();
    create_l(s, Kind::Active, "a-np-wl", "", &with_l("2")).unwrap();
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn walk_filters_as_containerd_check_walk() {
    let s = open();
    check_walk_store(&s);
    let gc = "labels.\"containerd.io/gc.root\"==check-walk";
    let cases: &[(&[&str], Vec<String>)] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            vec![gc.into()],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            vec![format!("kind==active,{gc}")],
        ),
        (&["v", "v-wl"], vec![format!("kind==view,{gc}")]),
        (&["p", "p-wl"], vec![format!("kind==committed,{gc}")]),
        (
            &["p", "a-np-wl"],
            vec!["name==p".into(), "name==a-np-wl".into()],
        ),
        (&["a-wl"], vec!["name==a-wl,labels.l".into()]),
        (&["a", "v"], vec!["parent==p".into()]),
        (
            &["a", "v", "a-wl", "v-wl"],
            vec![format!("parent!=\"\",{gc}")],
        ),
        (
            &["p-wl", "a-wl", "v-wl", "a-np-wl"],
            vec!["labels.l".into()],
        ),
        (&["a-wl", "a-np-wl"], vec!["labels.l==2".into()]),
    ];
    for (i, (want, filters)) in cases.iter().enumerate() {
        let f: Vec<&str> = filters.iter().map(String::as_str).collect();
        assert_eq!(walk_names(&s, &f), sorted(want), "case {i}: {filters:?}");
    }
    // Roots, and no filter at all.
    assert_eq!(
        walk_names(&s, &["parent==\"\""]),
        sorted(&["a-np", "p", "p-wl", "a-np-wl"])
    );
    assert_eq!(walk_names(&s, &[]).len(), 8);
    assert_eq!(walk_names(&s, &[""]).len(), 8);
    assert_eq!(check(&s), 8);
}

#[test]
fn walk_bad_filter_is_invalid_argument_and_calls_nothing() {
    let s = open();
    prepare(&s, "a", "");
    let mut called = false;
    let e = err_of(s.walk(&["name==a", "name=="], |_| {
        called = true;
        Ok(())
    }));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.message().contains(">|") || e.message().contains("[name==]"),
        "{e}"
    );
    assert!(!called);
}

#[test]
fn walk_stops_at_the_first_callback_error() {
    let s = open_with(&StoreOptions {
        no_sync: true,
        ..Default::default()
    });
    for i in 0..(WALK_BATCH + 20) {
        prepare(&s, &format!("k{i}"), "");
    }
    let mut seen = 0;
    let e = err_of(s.walk::<&str>(&[], |_| {
        seen += 1;
        if seen == 3 {
            Err(snapshot_core::Error::failed_precondition("stop here"))
        } else {
            Ok(())
        }
    }));
    assert_eq!(
        (e.kind(), e.message()),
        (ErrorKind::FailedPrecondition, "stop here")
    );
    assert_eq!(seen, 3);
}

#[test]
fn walk_callbacks_may_call_the_store() {
    let s = open();
    check_walk_store(&s);
    let mut seen = 0;
    s.walk(&["kind==active"], |info| {
        // Reads and writes from inside the callback (containerd's checkStatInWalk).
        let again = s.read(|tx| tx.info(&info.name))?;
        assert_eq!(&again, info);
        if !info.parent.is_empty() {
            assert_eq!(s.read(|tx| tx.info(&info.parent))?.kind, Kind::Committed);
        }
        let mut u = info.clone();
        u.labels.insert("seen".into(), "yes".into());
        s.write(|tx| tx.update_info(&u, &["labels.seen"]))?;
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 4);
    assert_eq!(
        walk_names(&s, &["labels.seen==yes"]),
        sorted(&["a-np", "a", "a-wl", "a-np-wl"])
    );
}

#[test]
fn walk_across_batches_returns_each_snapshot_once() {
    let s = open_with(&StoreOptions {
        no_sync: true,
        ..Default::default()
    });
    let n = 2 * WALK_BATCH + 57;
    for i in 0..n {
        let l = labels([("third", if i % 3 == 0 { "yes" } else { "no" })]);
        create_l(&s, Kind::Active, &format!("k{i:04}"), "", &l).unwrap();
    }
    let mut seen = Vec::new();
    s.walk::<&str>(&[], |i| {
        seen.push(i.name.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), n);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        n,
        "no duplicates"
    );
    assert_eq!(walk_names(&s, &["labels.third==yes"]).len(), n.div_ceil(3));
    // Removing the visited snapshot while walking still visits every snapshot once.
    let mut visited = HashSet::new();
    s.walk::<&str>(&[], |i| {
        assert!(visited.insert(i.name.clone()), "{} twice", i.name);
        if i.name.starts_with('k') {
            s.write(|tx| tx.remove(&i.name))?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(visited.len(), n);
    assert_eq!(check(&s), 0);
}

// ---- Close, reopen, persistence -----------------------------------------------------------------

#[test]
fn calls_after_close_are_unavailable() {
    let s = open();
    prepare(&s, "a", "");
    s.close().unwrap();
    s.close().unwrap(); // closing twice is fine
    let e = err_of(stat(&s, "a"));
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.message().contains(&s.path().display().to_string()), "{e}");
    assert_eq!(
        kind_of(create(&s, Kind::Active, "b", "")),
        ErrorKind::Unavailable
    );
    assert_eq!(kind_of(commit(&s, "c", "a")), ErrorKind::Unavailable);
    assert_eq!(kind_of(remove(&s, "a")), ErrorKind::Unavailable);
    assert_eq!(
        kind_of(update(&s, &Info::new(Kind::Active, "a"), &[])),
        ErrorKind::Unavailable
    );
    assert_eq!(
        kind_of(s.walk::<&str>(&[], |_| Ok(()))),
        ErrorKind::Unavailable
    );
    assert_eq!(kind_of(s.read(|tx| tx.check())), ErrorKind::Unavailable);
}

#[test]
fn opening_one_directory_twice_is_unavailable() {
    let s = open();
    let e = err_of(MetaStore::open(s.path(), &StoreOptions::default()).map(|_| ()));
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.message().contains("already open"), "{e}");
    // Through another spelling of the same path as well.
    let dotted = s.dir.path().join(".").join("metadata");
    assert_eq!(
        kind_of(MetaStore::open(&dotted, &StoreOptions::default()).map(|_| ())),
        ErrorKind::Unavailable
    );
    // The first store still works; once closed, the directory opens again.
    prepare(&s, "a", "");
    s.close().unwrap();
    let again = MetaStore::open(s.path(), &StoreOptions::default()).unwrap();
    assert_eq!(again.read(|tx| tx.info("a")).unwrap().kind, Kind::Active);
    again.close().unwrap();
}

#[test]
fn persists_across_close_and_reopen_without_reusing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata");
    let store = MetaStore::open(&path, &StoreOptions::default()).unwrap();
    committed(&store, "base", "");
    let l = labels([("containerd.io/gc.root", "x"), ("k", "v")]);
    let usage = Usage {
        size: 8192,
        inodes: 3,
    };
    store
        .write(|tx| tx.create(Kind::Active, "tmp", "base", &l))
        .unwrap();
    let opts = CommitOptions::with_labels(l.clone());
    store
        .write(|tx| tx.commit_active("tmp", "layer", usage, &opts))
        .unwrap();
    create_l(&store, Kind::View, "view", "layer", &l).unwrap();
    let top = prepare(&store, "top", "layer");
    let mut before = Vec::new();
    store
        .walk::<&str>(&[], |i| {
            before.push(i.clone());
            Ok(())
        })
        .unwrap();
    let ids_before = store.read(|tx| tx.id_map()).unwrap();
    // Remove the newest snapshot: its id must not be handed out again.
    remove(&store, "top").unwrap();
    store.close().unwrap();
    drop(store);

    let store = MetaStore::open(&path, &StoreOptions::default()).unwrap();
    let mut after = Vec::new();
    store
        .walk::<&str>(&[], |i| {
            after.push(i.clone());
            Ok(())
        })
        .unwrap();
    before.retain(|i| i.name != "top");
    assert_eq!(
        after, before,
        "names, kinds, parents, labels and times survive"
    );
    let mut ids_after = store.read(|tx| tx.id_map()).unwrap();
    ids_after.insert(top.id, "top".into());
    assert_eq!(ids_after, ids_before);
    assert_eq!(
        store.read(|tx| tx.stored_usage("layer")).unwrap(),
        (Kind::Committed, usage)
    );
    assert_eq!(
        store
            .read(|tx| tx.snapshot("view"))
            .unwrap()
            .parent_ids
            .len(),
        2
    );
    let next = prepare(&store, "next", "layer");
    assert_eq!(
        next.id,
        top.id + 1,
        "the counter continues past removed ids"
    );
    assert_eq!(check(&store), 4);
    store.close().unwrap();
}

#[test]
fn no_sync_option_works_and_persists_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata");
    let opts = StoreOptions {
        no_sync: true,
        ..Default::default()
    };
    let store = MetaStore::open(&path, &opts).unwrap();
    for i in 0..50 {
        committed(
            &store,
            &format!("c{i}"),
            &if i == 0 {
                String::new()
            } else {
                format!("c{}", i - 1)
            },
        );
    }
    assert_eq!(check(&store), 50);
    store.close().unwrap();
    let store = MetaStore::open(&path, &StoreOptions::default()).unwrap();
    assert_eq!(check(&store), 50);
    assert_eq!(
        store
            .read(|tx| tx.snapshot("c49"))
            .unwrap()
            .parent_ids
            .len(),
        49
    );
    store.close().unwrap();
}

// ---- Sizes, concurrency, growth ------------------------------------------------------------------

#[test]
fn keys_of_ten_kib() {
    let s = open();
    let key = "k".repeat(10 * 1024);
    let name = format!("{}/name with spaces/../../etc", "n".repeat(10 * 1024));
    let child = format!("{}\u{e9}", "c".repeat(10 * 1024));
    prepare(&s, &key, "");
    assert_eq!(
        kind_of(create(&s, Kind::View, &key, "")),
        ErrorKind::AlreadyExists
    );
    commit(&s, &name, &key).unwrap();
    prepare(&s, &child, &name);
    let info = stat(&s, &child).unwrap();
    assert_eq!(
        (info.name.as_str(), info.parent.as_str()),
        (child.as_str(), name.as_str())
    );
    // Keys that share a long prefix stay distinct.
    let sibling = format!("{}x", "k".repeat(10 * 1024));
    prepare(&s, &sibling, &name);
    assert_eq!(kind_of(stat(&s, &key)), ErrorKind::NotFound);
    // Messages stay short.
    let e = err_of(remove(&s, &name));
    assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    let by_parent = walk_names(&s, &[&format!("parent==\"{name}\"")]);
    assert_eq!(by_parent, sorted(&[&child, &sibling]));
    assert_eq!(
        walk_names(&s, &[&format!("name=={child}")]),
        vec![child.clone()]
    );
    remove(&s, &child).unwrap();
    remove(&s, &sibling).unwrap();
    remove(&s, &name).unwrap();
    assert_eq!(check(&s), 0);
}

#[test]
fn concurrent_creates_on_one_parent() {
    let s = Arc::new(open_with(&StoreOptions {
        no_sync: true,
        ..Default::default()
    }));
    let pid = committed(&s, "base", "");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..40 {
                    let key = format!("t{t}-{i}");
                    let kind = if i % 2 == 0 { Kind::Active } else { Kind::View };
                    let snap = create(&s, kind, &key, "base").unwrap();
                    assert_eq!(snap.parent_ids, vec![pid]);
                    ids.push(snap.id);
                    if i % 5 == 0 {
                        s.walk(&["parent==base"], |_| Ok(())).unwrap();
                    }
                }
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert!(all.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(all.len(), 320);
    assert_eq!(walk_names(&s, &["parent==base"]).len(), 320);
    assert_eq!(check(&s), 321);
}

#[test]
fn racing_for_one_key_exactly_one_wins() {
    let s = Arc::new(open());
    committed(&s, "base", "");
    for round in 0..5 {
        let key = format!("contended-{round}");
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (s, barrier, key) = (Arc::clone(&s), Arc::clone(&barrier), key.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let kind = if t % 2 == 0 { Kind::Active } else { Kind::View };
                    create(&s, kind, &key, "base")
                        .map(|_| ())
                        .map_err(|e| e.kind())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(ErrorKind::AlreadyExists))));
        // Racing commits onto one name: one wins, the rest see AlreadyExists.
        let name = format!("name-{round}");
        for t in 0..8 {
            prepare(&s, &format!("c{round}-{t}"), "");
        }
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (s, barrier, name) = (Arc::clone(&s), Arc::clone(&barrier), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    commit(&s, &name, &format!("c{round}-{t}"))
                        .map(|_| ())
                        .map_err(|e| e.kind())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(ErrorKind::AlreadyExists))));
    }
    assert_eq!(check(&s), 1 + 5 * (1 + 8));
}

#[test]
fn map_grows_when_full() {
    let s = Arc::new(open_with(&StoreOptions {
        no_sync: true,
        map_size: 64 << 10,
    }));
    let data_file = s.path().join("data.mdb");
    // ~4 KiB of labels per snapshot; 4 threads writing 100 each need about 2 MiB, far
    // beyond the 64 KiB map: several doublings, some while other writers wait.
    let big = |i: usize| labels([(format!("label-{i}"), "v".repeat(4000))]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..100 {
                    let key = format!("t{t}-{i}");
                    create_l(&s, Kind::Active, &key, "", &big(i)).unwrap();
                    if i % 10 == 0 {
                        assert_eq!(s.read(|tx| tx.info(&key)).unwrap().labels, big(i));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let size = std::fs::metadata(&data_file).unwrap().len();
    assert!(
        size > 16 * (64 << 10),
        "data file is {size} bytes: the map grew past 1 MiB"
    );
    for t in 0..4 {
        for i in 0..100 {
            assert_eq!(stat(&s, &format!("t{t}-{i}")).unwrap().labels, big(i));
        }
    }
    // Growth also works for commits and updates.
    for i in 0..20 {
        let key = format!("t0-{i}");
        let opts = CommitOptions::with_labels(big(i + 1000));
        commit_with(&s, &format!("c{i}"), &key, &opts).unwrap();
    }
    assert_eq!(check(&s), 400);
    // And it survives a reopen with the small initial size.
    s.close().unwrap();
    let again = MetaStore::open(
        s.path(),
        &StoreOptions {
            no_sync: true,
            map_size: 64 << 10,
        },
    )
    .unwrap();
    assert_eq!(again.read(|tx| tx.check()).unwrap(), 400);
    again
        .write(|tx| tx.create(Kind::Active, "after", "", &big(7)))
        .unwrap();
    assert_eq!(again.read(|tx| tx.info("c3")).unwrap().labels, big(1003));
    again.close().unwrap();
}

#[test]
fn failed_write_closure_leaves_nothing() {
    let s = open();
    committed(&s, "base", "");
    // An error after a successful create aborts the whole transaction.
    let e = err_of(s.write(|tx| {
        tx.create(Kind::Active, "half", "base", &Labels::new())?;
        tx.create(Kind::Active, "half", "base", &Labels::new())
    }));
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(kind_of(stat(&s, "half")), ErrorKind::NotFound);
    // Several operations in one transaction commit together, and the id counter is
    // persisted with them.
    let (a, b) = s
        .write(|tx| {
            let a = tx.create(Kind::Active, "x", "base", &Labels::new())?;
            tx.commit_active("x", "y", Usage::default(), &CommitOptions::default())?;
            let b = tx.create(Kind::View, "z", "y", &Labels::new())?;
            Ok((a, b))
        })
        .unwrap();
    assert_eq!(b.parent_ids[0], a.id);
    assert_eq!(b.id, a.id + 1);
    assert_eq!(check(&s), 3);
}

#[test]
fn an_aborted_create_never_hands_its_id_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let aborted = store
        .write(|tx| {
            let s = tx.create(Kind::Active, "a", "", &Labels::new())?;
            Err::<(), _>(snapshot_core::Error::unknown(format!(
                "abort after id {}",
                s.id
            )))
        })
        .unwrap_err();
    assert!(aborted.to_string().contains("id 1"), "{aborted}");
    // The caller of the aborted transaction may still be undoing `snapshots/1`.
    let s = store
        .write(|tx| tx.create(Kind::Active, "a", "", &Labels::new()))
        .unwrap();
    assert_eq!(s.id, 2);
}

#[test]
fn write_closures_run_once_while_the_map_grows() {
    let s = open_with(&StoreOptions {
        no_sync: true,
        map_size: 64 << 10,
    });
    let initial = s.map_size().unwrap();
    let big = |i: usize| labels([(format!("label-{i}"), "v".repeat(4000))]);
    let mut runs = 0;
    for i in 0..300 {
        let key = format!("k{i}");
        s.write(|tx| {
            runs += 1;
            tx.create(Kind::Active, &key, "", &big(i))
        })
        .unwrap();
    }
    assert_eq!(runs, 300, "every closure ran exactly once");
    assert!(
        s.map_size().unwrap() >= 8 * initial,
        "the map grew before the transactions that needed it: {} from {initial}",
        s.map_size().unwrap()
    );
    assert_eq!(check(&s), 300);
}

#[test]
fn reserved_ids_are_fresh_and_recorded() {
    let s = open();
    let a = s.reserve_id().unwrap();
    let b = s.reserve_id().unwrap();
    assert!(b > a, "{b} after {a}");
    // Recorded out of order: the counter ends past both.
    s.write(|tx| tx.create_with_id(b, Kind::Active, "b", "", &Labels::new()))
        .unwrap();
    s.write(|tx| tx.create_with_id(a, Kind::Active, "a", "", &Labels::new()))
        .unwrap();
    let taken = s.write(|tx| tx.create_with_id(a, Kind::Active, "c", "", &Labels::new()));
    assert_eq!(kind_of(taken), ErrorKind::InvalidArgument);
    let next = s
        .write(|tx| tx.create(Kind::Active, "d", "", &Labels::new()))
        .unwrap();
    assert!(next.id > b);
    assert!(s.reserve_id().unwrap() > next.id);
    // The checks of create run without writing, in containerd's order.
    let r = s.read(|tx| tx.check_create(Kind::Active, "a", "missing", &Labels::new()));
    assert_eq!(kind_of(r), ErrorKind::NotFound);
    let r = s.read(|tx| tx.check_create(Kind::Active, "a", "", &Labels::new()));
    assert_eq!(kind_of(r), ErrorKind::AlreadyExists);
    assert_eq!(check(&s), 3);
}

/// A process the program starts does not inherit the store's data file (it would keep
/// the filesystem busy, unmountable, while it runs).
#[test]
fn started_processes_do_not_inherit_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(&dir.path().join("meta"), &StoreOptions::default()).unwrap();
    let data = std::fs::canonicalize(dir.path().join("meta/data.mdb")).unwrap();
    let own: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    assert!(own.contains(&data), "the store holds {}", data.display());
    let out = std::process::Command::new("sh")
        .args(["-c", "ls -l /proc/$$/fd"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !listing.contains(data.to_str().unwrap()),
        "the child inherited the data file:\n{listing}"
    );
    store.close().unwrap();
}
