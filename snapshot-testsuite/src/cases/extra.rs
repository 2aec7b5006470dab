//! Cases containerd's suite lacks: every error kind of the contract through the trait,
//! restart persistence, concurrency, isolation, freeing of files, and hostile keys.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use snapshot_core::keyspace::MAX_LABEL_SIZE;
use snapshot_core::usage::disk_usage;
use snapshot_core::{
    labels, CommitOptions, CreateOptions, ErrorKind, Info, Kind, Mount, Result, Snapshotter,
};

use super::{commit_opt, expect_err, expect_err_naming, opt, unique, OrFail};
use crate::fstest::{
    apply, check_directory_equal_with_applier, create_dir, create_file, remove_all, Applier,
};
use crate::Ctx;

fn commit_base(sn: &dyn Snapshotter, name: &str, parent: &str) {
    let key = format!("{name}-tmp");
    sn.prepare(&key, parent, &opt())
        .or_fail(format!("prepare {key:?}"));
    sn.commit(name, &key, &commit_opt())
        .or_fail(format!("commit {key:?} as {name:?}"));
}

fn all_infos(sn: &dyn Snapshotter) -> HashMap<String, Info> {
    let mut out = HashMap::new();
    sn.walk(&[], &mut |i| {
        out.insert(i.name.clone(), i.clone());
        Ok(())
    })
    .or_fail("walk");
    out
}

fn names(sn: &dyn Snapshotter) -> BTreeSet<String> {
    all_infos(sn).into_keys().collect()
}

/// NotFound from every method for a missing key, and for a missing parent.
pub fn errors_not_found(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let missing = "does-not-exist";
    expect_err_naming(
        sn.stat(missing),
        ErrorKind::NotFound,
        missing,
        "stat of a missing key",
    );
    expect_err_naming(
        sn.usage(missing),
        ErrorKind::NotFound,
        missing,
        "usage of a missing key",
    );
    expect_err_naming(
        sn.mounts(missing),
        ErrorKind::NotFound,
        missing,
        "mounts of a missing key",
    );
    expect_err_naming(
        sn.remove(missing),
        ErrorKind::NotFound,
        missing,
        "remove of a missing key",
    );
    expect_err_naming(
        sn.update(&Info::new(Kind::Active, missing), &[]),
        ErrorKind::NotFound,
        missing,
        "update of a missing key",
    );
    expect_err_naming(
        sn.commit("new-name", missing, &commit_opt()),
        ErrorKind::NotFound,
        missing,
        "commit of a missing key",
    );
    expect_err_naming(
        sn.prepare("k", missing, &opt()),
        ErrorKind::NotFound,
        missing,
        "prepare on a missing parent",
    );
    expect_err_naming(
        sn.view("v", missing, &opt()),
        ErrorKind::NotFound,
        missing,
        "view on a missing parent",
    );
    // A failed create takes nothing: both keys are free, and "new-name" was not made.
    assert!(
        names(sn).is_empty(),
        "failed calls must create nothing, found {:?}",
        names(sn)
    );
    sn.prepare("k", "", &opt())
        .or_fail("prepare k after the failed prepare");
    sn.view("v", "", &opt())
        .or_fail("view v after the failed view");

    sn.remove("k").or_fail("remove k");
    expect_err_naming(
        sn.stat("k"),
        ErrorKind::NotFound,
        "k",
        "stat of a removed snapshot",
    );
    expect_err_naming(sn.remove("k"), ErrorKind::NotFound, "k", "second remove");
    commit_base(sn, "base", "");
    expect_err_naming(
        sn.stat("base-tmp"),
        ErrorKind::NotFound,
        "base-tmp",
        "stat of a committed key",
    );
    expect_err_naming(
        sn.mounts("base-tmp"),
        ErrorKind::NotFound,
        "base-tmp",
        "mounts of a committed key",
    );
}

/// AlreadyExists for every way of reusing a taken key or name.
pub fn errors_already_exists(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    sn.prepare("a", "base", &opt()).or_fail("prepare a");
    sn.view("v", "base", &opt()).or_fail("view v");
    let ae = ErrorKind::AlreadyExists;
    expect_err_naming(
        sn.prepare("a", "", &opt()),
        ae,
        "a",
        "prepare with an active's key",
    );
    expect_err_naming(
        sn.view("a", "base", &opt()),
        ae,
        "a",
        "view with an active's key",
    );
    expect_err_naming(
        sn.prepare("v", "base", &opt()),
        ae,
        "v",
        "prepare with a view's key",
    );
    expect_err_naming(sn.view("v", "", &opt()), ae, "v", "view with a view's key");
    expect_err_naming(
        sn.prepare("base", "", &opt()),
        ae,
        "base",
        "prepare with a committed name",
    );
    expect_err_naming(
        sn.view("base", "base", &opt()),
        ae,
        "base",
        "view with a committed name",
    );
    expect_err_naming(
        sn.commit("base", "a", &commit_opt()),
        ae,
        "base",
        "commit to a committed name",
    );
    expect_err_naming(
        sn.commit("a", "a", &commit_opt()),
        ae,
        "a",
        "commit to the active's own key",
    );
    expect_err_naming(
        sn.commit("v", "a", &commit_opt()),
        ae,
        "v",
        "commit to a view's key",
    );
    // The name is checked before the key (containerd's bolt.go).
    expect_err_naming(
        sn.commit("base", "missing", &commit_opt()),
        ae,
        "base",
        "commit of a missing key to a taken name",
    );
    let a = sn.stat("a").or_fail("stat a after the failed commits");
    assert_eq!(
        a.kind,
        Kind::Active,
        "a failed commit must leave the active snapshot alone"
    );
    assert_eq!(a.parent, "base");
    assert_eq!(sn.stat("v").or_fail("stat v").kind, Kind::View);
    assert_eq!(
        names(sn),
        ["a", "base", "v"].map(String::from).into(),
        "snapshots after the failed calls"
    );
}

/// FailedPrecondition: mounts of a committed snapshot, commit of a view, remove with
/// children of every kind.
pub fn errors_failed_precondition(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let fp = ErrorKind::FailedPrecondition;
    commit_base(sn, "base", "");
    expect_err_naming(
        sn.mounts("base"),
        fp,
        "base",
        "mounts of a committed snapshot",
    );
    sn.view("v", "base", &opt()).or_fail("view v");
    expect_err_naming(
        sn.commit("c", "v", &commit_opt()),
        fp,
        "v",
        "commit of a view",
    );
    assert_eq!(
        sn.stat("v").or_fail("stat v").kind,
        Kind::View,
        "the view survives the failed commit"
    );
    expect_err(
        sn.stat("c"),
        ErrorKind::NotFound,
        "the failed commit must not create c",
    );

    expect_err_naming(sn.remove("base"), fp, "base", "remove with a view child");
    sn.remove("v").or_fail("remove v");
    sn.prepare("a", "base", &opt()).or_fail("prepare a");
    expect_err_naming(sn.remove("base"), fp, "base", "remove with an active child");
    sn.remove("a").or_fail("remove a");
    commit_base(sn, "child", "base");
    expect_err_naming(
        sn.remove("base"),
        fp,
        "base",
        "remove with a committed child",
    );
    sn.stat("base").or_fail("base survives the failed removes");
    sn.remove("child").or_fail("remove child");
    sn.remove("base")
        .or_fail("remove base once its children are gone");
}

fn label_of_size(total: usize) -> snapshot_core::Labels {
    labels([("k", "v".repeat(total - 1))])
}

/// InvalidArgument: non-committed parents, unknown field paths, oversized and empty
/// labels, empty keys, NUL bytes, bad filters. None of them creates anything.
pub fn errors_invalid_argument(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let ia = ErrorKind::InvalidArgument;
    commit_base(sn, "base", "");
    sn.prepare("a", "base", &opt()).or_fail("prepare a");
    sn.view("v", "base", &opt()).or_fail("view v");
    let before = names(sn);

    expect_err_naming(
        sn.prepare("x", "a", &opt()),
        ia,
        "a",
        "prepare on an active parent",
    );
    expect_err_naming(
        sn.view("x", "a", &opt()),
        ia,
        "a",
        "view on an active parent",
    );
    expect_err_naming(
        sn.prepare("x", "v", &opt()),
        ia,
        "v",
        "prepare on a view parent",
    );
    expect_err_naming(sn.view("x", "v", &opt()), ia, "v", "view on a view parent");

    let info = sn.stat("a").or_fail("stat a");
    for path in [
        "parent", "name", "kind", "created", "updated", "labelsx", "foo",
    ] {
        expect_err(
            sn.update(&info, &[path.to_string()]),
            ia,
            format!("update with the field path {path:?}"),
        );
    }

    // key + value may hold exactly MAX_LABEL_SIZE bytes, not one more.
    let fits = CreateOptions::with_labels(label_of_size(MAX_LABEL_SIZE));
    let over = CreateOptions::with_labels(label_of_size(MAX_LABEL_SIZE + 1));
    sn.prepare("fits", "", &fits)
        .or_fail("prepare with a label of exactly 4096 bytes");
    sn.remove("fits").or_fail("remove fits");
    expect_err(
        sn.prepare("x", "", &over),
        ia,
        "prepare with a label over 4096 bytes",
    );
    expect_err(
        sn.view("x", "base", &over),
        ia,
        "view with a label over 4096 bytes",
    );
    expect_err(
        sn.commit("x", "a", &CommitOptions::with_labels(over.labels.clone())),
        ia,
        "commit with a label over 4096 bytes",
    );
    let mut big = info.clone();
    big.labels = over.labels.clone();
    expect_err(
        sn.update(&big, &[]),
        ia,
        "update with a label over 4096 bytes",
    );
    expect_err(
        sn.update(&big, &["labels.k".to_string()]),
        ia,
        "update labels.k over 4096 bytes",
    );
    let empty_key = CreateOptions::with_labels(labels([("", "v")]));
    expect_err(
        sn.prepare("x", "", &empty_key),
        ia,
        "prepare with an empty label key",
    );
    let a = sn.stat("a").or_fail("stat a");
    assert_eq!(
        a.labels, info.labels,
        "a refused update must not change the labels"
    );

    expect_err(sn.prepare("", "", &opt()), ia, "prepare with an empty key");
    expect_err(sn.view("", "base", &opt()), ia, "view with an empty key");
    expect_err(
        sn.commit("", "a", &commit_opt()),
        ia,
        "commit with an empty name",
    );
    expect_err(
        sn.prepare("x\0y", "", &opt()),
        ia,
        "prepare with NUL in the key",
    );
    expect_err(
        sn.view("x\0y", "base", &opt()),
        ia,
        "view with NUL in the key",
    );
    expect_err(
        sn.prepare("x", "base\0", &opt()),
        ia,
        "prepare with NUL in the parent",
    );
    expect_err(
        sn.commit("x\0y", "a", &commit_opt()),
        ia,
        "commit with NUL in the name",
    );

    for filter in [
        "name==",
        "name~=(",
        "labels.\"unterminated",
        "==x",
        "name==a,,",
    ] {
        let mut called = false;
        let res = sn.walk(&[filter.to_string()], &mut |_| {
            called = true;
            Ok(())
        });
        expect_err(res, ia, format!("walk with the bad filter {filter:?}"));
        assert!(
            !called,
            "walk with the bad filter {filter:?} must not call back"
        );
    }
    assert_eq!(
        names(sn),
        before,
        "refused calls must create or remove nothing"
    );
    assert_eq!(
        sn.stat("a").or_fail("stat a").kind,
        Kind::Active,
        "a refused commit keeps the active"
    );
}

/// Unavailable from every method after close; close again is fine.
pub fn errors_unavailable_after_close(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    sn.prepare("a", "base", &opt()).or_fail("prepare a");
    let info = sn.stat("a").or_fail("stat a");
    sn.close().or_fail("close");
    let un = ErrorKind::Unavailable;
    expect_err(sn.stat("a"), un, "stat after close");
    expect_err(sn.update(&info, &[]), un, "update after close");
    expect_err(sn.usage("a"), un, "usage after close");
    expect_err(sn.mounts("a"), un, "mounts after close");
    expect_err(sn.prepare("b", "base", &opt()), un, "prepare after close");
    expect_err(sn.view("c", "base", &opt()), un, "view after close");
    expect_err(sn.commit("d", "a", &commit_opt()), un, "commit after close");
    expect_err(sn.remove("a"), un, "remove after close");
    expect_err(sn.walk(&[], &mut |_| Ok(())), un, "walk after close");
    sn.close().or_fail("close again");
}

/// One owner per root: opening a root that an open snapshotter holds fails at once with
/// Unavailable naming the root, leaves the holder working, and once the holder is closed
/// the root opens again.
pub fn root_lock(ctx: &mut Ctx<'_>) {
    commit_base(ctx.sn(), "base", "");
    match ctx.harness().open(ctx.root()) {
        Ok(second) => {
            let _ = second.close();
            panic!(
                "{}: a second snapshotter opened {} while the first holds it",
                ctx.test(),
                ctx.root().display()
            );
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unavailable, "second open: {e}");
            let root = ctx.root().to_string_lossy().into_owned();
            assert!(e.to_string().contains(&root), "names the root {root}: {e}");
        }
    }
    let sn = ctx.sn();
    sn.prepare("a", "base", &opt())
        .or_fail("prepare after the refused open");
    ctx.reopen();
    let sn = ctx.sn();
    assert_eq!(sn.stat("a").or_fail("stat a").kind, Kind::Active);
}

/// Errors about a 20 KB key quote it shortened, the same way everywhere, so the message
/// fits a log line and a gRPC status header.
pub fn long_key_messages(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let key = "k".repeat(20 << 10);
    commit_base(sn, &key, "");
    let checks: Vec<(&str, snapshot_core::Result<()>)> = vec![
        ("mounts of a committed key", sn.mounts(&key).map(drop)),
        (
            "prepare on an existing key",
            sn.prepare(&key, "", &opt()).map(drop),
        ),
        (
            "commit of a committed key",
            sn.commit("other", &key, &commit_opt()),
        ),
        (
            "remove of a missing key",
            sn.remove(&format!("{key}-missing")),
        ),
    ];
    for (what, r) in checks {
        let e = r.expect_err(what);
        let msg = e.to_string();
        assert!(
            msg.len() < 1024,
            "{what}: a {}-byte message: {:.300}",
            msg.len(),
            msg
        );
        assert!(msg.contains("kkkk"), "{what}: names the key: {msg}");
    }
}

/// Close and reopen the same root: the same snapshots with the same labels and times,
/// the same mounts, the stored usage; keys keep working and new snapshots never reuse a
/// directory of an old one.
pub fn restart_persistence(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "c1", "");
    commit_base(sn, "c2", "c1");
    let mut with_l = opt();
    with_l.labels.insert("l".into(), "1".into());
    sn.prepare("a", "c2", &with_l).or_fail("prepare a");
    sn.view("v", "c2", &opt()).or_fail("view v");
    sn.prepare("a-np", "", &opt()).or_fail("prepare a-np");
    let mut a = sn.stat("a").or_fail("stat a");
    a.labels.insert("l2".into(), "2".into());
    sn.update(&a, &["labels.l2".to_string()])
        .or_fail("update a");
    let before = all_infos(sn);
    let mounts: HashMap<&str, Vec<Mount>> = ["a", "v", "a-np"]
        .into_iter()
        .map(|k| (k, sn.mounts(k).or_fail(format!("mounts {k:?}"))))
        .collect();
    let usage = sn.usage("c1").or_fail("usage c1");
    assert!(
        before["a"].updated > before["a"].created,
        "update must move `updated` of a"
    );

    ctx.reopen();
    let sn = ctx.sn();
    let after = all_infos(sn);
    assert_eq!(after, before, "the snapshots after a restart");
    for (k, info) in &before {
        assert_eq!(
            &sn.stat(k).or_fail(format!("stat {k:?} after restart")),
            info,
            "stat {k:?} after restart"
        );
    }
    for (k, m) in &mounts {
        assert_eq!(
            &sn.mounts(k).or_fail(format!("mounts {k:?} after restart")),
            m,
            "mounts {k:?} after restart"
        );
    }
    assert_eq!(
        sn.usage("c1").or_fail("usage c1 after restart"),
        usage,
        "stored usage after restart"
    );

    expect_err(
        sn.prepare("v", "", &opt()),
        ErrorKind::AlreadyExists,
        "prepare v after restart",
    );
    expect_err(
        sn.remove("c2"),
        ErrorKind::FailedPrecondition,
        "remove c2 (with children) after restart",
    );
    sn.commit("c3", "a", &commit_opt())
        .or_fail("commit a after restart");
    let new = sn
        .prepare("a", "c3", &opt())
        .or_fail("prepare the freed key a on c3");
    let fresh = sn
        .prepare("fresh", "", &opt())
        .or_fail("prepare fresh after restart");
    for old in mounts.values().flatten() {
        for m in new.iter().chain(&fresh) {
            if m.kind == "bind" && old.kind == "bind" {
                assert_ne!(
                    m.source, old.source,
                    "a new snapshot reuses the directory of an old one"
                );
            }
        }
    }
    assert_eq!(sn.stat("c3").or_fail("stat c3").parent, "c2");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).or_fail(format!("read {}", p.display()))
}

/// Active and view mounts still work after a restart and show the data written before.
pub fn restart_mounts(ctx: &mut Ctx<'_>) {
    let base_files = apply([
        create_dir("/etc", 0o755),
        create_file("/etc/base", b"base\n", 0o644),
    ]);
    let mnt = ctx.work().join("mnt");
    {
        let sn = ctx.sn();
        let m = sn.prepare("base-a", "", &opt()).or_fail("prepare base-a");
        let g = ctx.mount(&m, &mnt);
        base_files.apply(g.path()).or_fail("write the base layer");
        g.unmount();
        sn.commit("base", "base-a", &commit_opt())
            .or_fail("commit base");
        let m = sn.prepare("a", "base", &opt()).or_fail("prepare a");
        let g = ctx.mount(&m, &mnt);
        create_file("/a-data", b"written before the restart\n", 0o644)
            .apply(g.path())
            .or_fail("write a-data");
        g.unmount();
        sn.view("v", "base", &opt()).or_fail("view v");
    }
    ctx.reopen();
    let sn = ctx.sn();
    let g = ctx.mount(&sn.mounts("a").or_fail("mounts a after restart"), &mnt);
    assert_eq!(
        read(&g.path().join("a-data")),
        "written before the restart\n"
    );
    assert_eq!(
        read(&g.path().join("etc/base")),
        "base\n",
        "the active shows its parent after restart"
    );
    create_file("/after", b"after\n", 0o644)
        .apply(g.path())
        .or_fail("write after the restart");
    g.unmount();
    let g = ctx.mount(
        &sn.mounts("v").or_fail("mounts v after restart"),
        &ctx.work().join("view"),
    );
    if let Err(d) = check_directory_equal_with_applier(g.path(), &base_files, ctx.work()) {
        panic!("the view after restart differs from its parent: {d}");
    }
    g.unmount();
    sn.commit("top", "a", &commit_opt())
        .or_fail("commit a after restart");
    let g = ctx.mount(
        &sn.view("top-view", "top", &opt()).or_fail("view top"),
        &mnt,
    );
    let expected = base_files
        .then(create_file(
            "/a-data",
            b"written before the restart\n",
            0o644,
        ))
        .then(create_file("/after", b"after\n", 0o644));
    if let Err(d) = check_directory_equal_with_applier(g.path(), &expected, ctx.work()) {
        panic!("the layer committed after restart: {d}");
    }
    g.unmount();
}

const THREADS: usize = 8;

/// 8 threads prepare and commit on one parent at once; all succeed.
pub fn concurrent_prepare_commit(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || -> Result<()> {
                    barrier.wait();
                    for round in 0..4 {
                        let key = format!("worker-{i}-{round}");
                        sn.prepare(&key, "base", &opt())?;
                        sn.commit(&format!("done-{i}-{round}"), &key, &commit_opt())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            h.join()
                .expect("worker panicked")
                .or_fail(format!("worker {i}"));
        }
    });
    let mut got = Vec::new();
    sn.walk(&["parent==base".to_string()], &mut |i| {
        assert_eq!(i.kind, Kind::Committed, "{:?}", i.name);
        got.push(i.name.clone());
        Ok(())
    })
    .or_fail("walk parent==base");
    got.sort();
    let mut expected: Vec<String> = (0..THREADS)
        .flat_map(|i| (0..4).map(move |r| format!("done-{i}-{r}")))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "the committed children of base");
}

/// 8 threads race to create one key (prepare and view mixed): exactly one wins, the
/// rest get AlreadyExists.
pub fn concurrent_same_key(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    for round in 0..4 {
        let key = format!("race-{round}");
        let parent = if round % 2 == 0 { "base" } else { "" };
        let barrier = Barrier::new(THREADS);
        let results: Vec<(Kind, Result<Vec<Mount>>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (barrier, key) = (&barrier, &key);
                    s.spawn(move || {
                        barrier.wait();
                        if i % 2 == 0 {
                            (Kind::Active, sn.prepare(key, parent, &opt()))
                        } else {
                            (Kind::View, sn.view(key, parent, &opt()))
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("racer panicked"))
                .collect()
        });
        let winners: Vec<Kind> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{key:?}: exactly one create must win, {} did",
            winners.len()
        );
        for (_, r) in results.into_iter().filter(|(_, r)| r.is_err()) {
            expect_err(
                r,
                ErrorKind::AlreadyExists,
                format!("a losing create of {key:?}"),
            );
        }
        assert_eq!(
            sn.stat(&key).or_fail(format!("stat {key:?}")).kind,
            winners[0],
            "kind of {key:?}"
        );
    }
}

/// 8 actives race to commit to one name: exactly one wins, the rest get AlreadyExists
/// and stay active.
pub fn concurrent_commit_same_name(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    for i in 0..THREADS {
        sn.prepare(&format!("act-{i}"), "base", &opt())
            .or_fail(format!("prepare act-{i}"));
    }
    let barrier = Barrier::new(THREADS);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    sn.commit("winner", &format!("act-{i}"), &commit_opt())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("committer panicked"))
            .collect()
    });
    let won: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one commit to \"winner\" must win, {} did",
        won.len()
    );
    for (i, r) in results.into_iter().enumerate() {
        let key = format!("act-{i}");
        if i == won[0] {
            expect_err(
                sn.stat(&key),
                ErrorKind::NotFound,
                format!("the committed key {key:?}"),
            );
        } else {
            expect_err(
                r,
                ErrorKind::AlreadyExists,
                format!("the losing commit of {key:?}"),
            );
            assert_eq!(
                sn.stat(&key).or_fail(format!("stat {key:?}")).kind,
                Kind::Active
            );
        }
    }
    assert_eq!(
        sn.stat("winner").or_fail("stat winner").kind,
        Kind::Committed
    );
}

/// Writes in a child never appear in its parent, a sibling, or a view.
pub fn isolation(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let base = apply([
        create_file("/shared", b"base\n", 0o644),
        create_file("/gone", b"x\n", 0o644),
        create_dir("/d", 0o755),
        create_file("/d/f", b"in d\n", 0o600),
    ]);
    let a_ops = apply([
        create_file("/shared", b"changed by a\n", 0o644),
        create_file("/a-only", b"a\n", 0o644),
        remove_all("/gone"),
        create_dir("/d/sub", 0o700),
        create_file("/d/f", b"a rewrote it\n", 0o666),
    ]);
    let b_ops = create_file("/b-only", b"b\n", 0o644);
    let m = sn.prepare("base-a", "", &opt()).or_fail("prepare base-a");
    let g = ctx.mount(&m, &ctx.work().join("base"));
    base.apply(g.path()).or_fail("apply base");
    g.unmount();
    sn.commit("base", "base-a", &commit_opt())
        .or_fail("commit base");

    let check = |g: &crate::MountGuard, expected: &Applier, what: &str| {
        if let Err(d) = check_directory_equal_with_applier(g.path(), expected, ctx.work()) {
            panic!("{what}: {d}");
        }
    };
    let ma = sn.prepare("a", "base", &opt()).or_fail("prepare a");
    let mb = sn.prepare("b", "base", &opt()).or_fail("prepare b");
    let mv = sn.view("v-before", "base", &opt()).or_fail("view v-before");
    let ga = ctx.mount(&ma, &ctx.work().join("a"));
    a_ops.apply(ga.path()).or_fail("write in a");
    let gb = ctx.mount(&mb, &ctx.work().join("b"));
    check(&gb, &base, "sibling b sees writes of a");
    b_ops.apply(gb.path()).or_fail("write in b");
    let gv = ctx.mount(&mv, &ctx.work().join("v-before"));
    check(&gv, &base, "a view made before the writes sees them");
    let gv2 = ctx.mount(
        &sn.view("v-after", "base", &opt()).or_fail("view v-after"),
        &ctx.work().join("v-after"),
    );
    check(&gv2, &base, "a view made after the writes sees them");
    check(
        &ga,
        &base.clone().then(a_ops.clone()),
        "a sees writes of its sibling b",
    );
    check(
        &gb,
        &base.clone().then(b_ops.clone()),
        "b after its own writes",
    );
    for g in [ga, gb, gv, gv2] {
        g.unmount();
    }
    sn.commit("a-done", "a", &commit_opt()).or_fail("commit a");
    let g = ctx.mount(
        &sn.view("parent-view", "base", &opt()).or_fail("view base"),
        &ctx.work().join("pv"),
    );
    check(&g, &base, "the parent after its child committed");
    g.unmount();
    let g = ctx.mount(
        &sn.view("child-view", "a-done", &opt())
            .or_fail("view a-done"),
        &ctx.work().join("cv"),
    );
    check(&g, &base.then(a_ops), "the committed child");
    g.unmount();
}

fn usage_of(root: &Path) -> snapshot_core::Usage {
    disk_usage(root).or_fail(format!("disk usage of {}", root.display()))
}

/// The files (every inode but directories) under `root`. A backend may keep empty trees
/// made ahead for creates to come (the shared lifecycle's blank trees): directories only.
fn files_under(root: &Path) -> u64 {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).or_fail(format!("list {}", d.display())) {
            let e = e.or_fail(format!("list {}", d.display()));
            let t = e
                .file_type()
                .or_fail(format!("stat {}", e.path().display()));
            if t.is_dir() {
                dirs.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Removing snapshots gives back their disk space and files (after `cleanup` for
/// backends that defer removal).
pub fn remove_frees_files(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let deferred = ctx.capabilities().deferred_remove;
    let cleanup = |sn: &dyn Snapshotter| {
        if deferred {
            let c = sn
                .as_cleaner()
                .expect("deferred_remove is set but the snapshotter has no Cleaner");
            c.cleanup().or_fail("cleanup");
        }
    };
    // Warm up, so directories a backend makes lazily exist before the baseline.
    sn.prepare("warm-up", "", &opt()).or_fail("prepare warm-up");
    sn.remove("warm-up").or_fail("remove warm-up");
    cleanup(sn);
    let baseline = usage_of(ctx.root());
    let baseline_files = files_under(ctx.root());

    const BIG: usize = 4 << 20;
    let mnt = ctx.work().join("mnt");
    let m = sn.prepare("a", "", &opt()).or_fail("prepare a");
    let g = ctx.mount(&m, &mnt);
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(g.path().join("big"), &data).or_fail("write big");
    for i in 0..50 {
        std::fs::write(g.path().join(format!("small-{i}")), format!("{i}\n"))
            .or_fail("write small");
    }
    g.unmount();
    sn.commit("c", "a", &commit_opt()).or_fail("commit c");
    let m = sn.prepare("b", "c", &opt()).or_fail("prepare b");
    let g = ctx.mount(&m, &mnt);
    std::fs::write(g.path().join("more"), &data[..1 << 20]).or_fail("write more");
    g.unmount();
    sn.view("v", "c", &opt()).or_fail("view v");
    let peak = usage_of(ctx.root());
    let peak_files = files_under(ctx.root());
    assert!(
        peak.size >= baseline.size + BIG as u64,
        "the data must take space under the root: {} bytes before, {} with 5 MiB written",
        baseline.size,
        peak.size
    );

    for k in ["v", "b", "c"] {
        sn.remove(k).or_fail(format!("remove {k:?}"));
    }
    cleanup(sn);
    let after = usage_of(ctx.root());
    let after_files = files_under(ctx.root());
    let what = if deferred {
        "after remove and cleanup"
    } else {
        "after remove (no cleanup)"
    };
    assert!(
        peak_files >= baseline_files + 52,
        "the 52 files written must be under the root: {baseline_files} before, {peak_files} at peak"
    );
    assert_eq!(
        after_files, baseline_files,
        "{what}: the root must hold as many files as before ({baseline_files} before, \
         {peak_files} at peak, {after_files} after; {} inodes before, {} after)",
        baseline.inodes, after.inodes
    );
    // The metastore may grow by some pages; the layers' megabytes must be gone.
    assert!(
        after.size <= baseline.size + (512 << 10),
        "{what}: {} bytes before, {} at peak, {} after",
        baseline.size,
        peak.size,
        after.size
    );
}

/// Keys that look like paths, huge keys and keys with NUL never touch a path outside the
/// root; the valid ones work like any key, the NUL ones are InvalidArgument.
pub fn hostile_keys(ctx: &mut Ctx<'_>) {
    let sn = ctx.sn();
    let nonce = unique("hostile");
    let escape = format!("../../escape-{nonce}");
    let abs = format!("/tmp/{nonce}/path");
    let keys: Vec<String> = [
        "../../x",
        "/abs/path",
        "..",
        ".",
        "../",
        "a/../../b",
        "snapshots/1",
        "metadata",
        "new-1",
        "rm-1",
        "with space",
        "tab\tand\nnewline",
        "ünïcødé",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([escape.clone(), abs.clone(), "k".repeat(10 << 10)])
    .collect();
    let outside: Vec<PathBuf> = vec![
        PathBuf::from("/abs/path"),
        PathBuf::from(&abs),
        ctx.root().join(&escape),
        ctx.root().join("snapshots").join(&escape),
        PathBuf::from(&escape),
        ctx.root().join("../../x"),
        ctx.root().join("../x"),
        ctx.root().join("../b"),
    ];
    let existed: Vec<bool> = outside
        .iter()
        .map(|p| p.symlink_metadata().is_ok())
        .collect();

    for key in &keys {
        let short = snapshot_core::keyspace::truncate_for_message(key);
        sn.prepare(key, "", &opt())
            .or_fail(format!("prepare {short:?}"));
        assert_eq!(&sn.stat(key).or_fail(format!("stat {short:?}")).name, key);
        let name = format!("{key}@committed");
        sn.commit(&name, key, &commit_opt())
            .or_fail(format!("commit {short:?}"));
        sn.prepare(key, &name, &opt())
            .or_fail(format!("prepare {short:?} again on its commit"));
        sn.view(&format!("{key}@view"), &name, &opt())
            .or_fail(format!("view of {short:?}"));
        assert_eq!(sn.stat(key).or_fail(format!("stat {short:?}")).parent, name);
    }
    let all = names(sn);
    for key in &keys {
        for k in [
            key.clone(),
            format!("{key}@committed"),
            format!("{key}@view"),
        ] {
            assert!(
                all.contains(&k),
                "walk misses {:?}",
                snapshot_core::keyspace::truncate_for_message(&k)
            );
        }
    }
    let ia = ErrorKind::InvalidArgument;
    expect_err(
        sn.prepare("../\0/x", "", &opt()),
        ia,
        "prepare with NUL in the key",
    );
    expect_err(
        sn.view("/abs\0", "", &opt()),
        ia,
        "view with NUL in the key",
    );
    expect_err(
        sn.prepare("ok", "..\0", &opt()),
        ia,
        "prepare with NUL in the parent",
    );
    expect_err(
        sn.commit("\0", "..", &commit_opt()),
        ia,
        "commit with a NUL name",
    );

    for (p, existed) in outside.iter().zip(existed) {
        if !existed {
            assert!(
                p.symlink_metadata().is_err(),
                "{} appeared outside the snapshotter root",
                p.display()
            );
        }
    }
    let mut beside: Vec<String> = std::fs::read_dir(ctx.tmp())
        .or_fail("list the case directory")
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .or_fail("read dir entry")
        })
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["root", "work"],
        "the snapshotter wrote beside its root"
    );
    assert!(
        std::fs::read_dir(ctx.work())
            .or_fail("list work/")
            .next()
            .is_none(),
        "the snapshotter wrote into work/"
    );
    let mut stack = vec![ctx.root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).or_fail(format!("list {}", dir.display())) {
            let e = e.or_fail("read dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(&nonce),
                "a key became a path: {}",
                e.path().display()
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }

    for key in &keys {
        let short = snapshot_core::keyspace::truncate_for_message(key);
        for k in [
            format!("{key}@view"),
            key.clone(),
            format!("{key}@committed"),
        ] {
            sn.remove(&k).or_fail(format!(
                "remove {:?}",
                snapshot_core::keyspace::truncate_for_message(&k)
            ));
        }
        expect_err(
            sn.stat(key),
            ErrorKind::NotFound,
            format!("stat {short:?} after remove"),
        );
    }
    assert!(names(sn).is_empty(), "every hostile snapshot is removed");
}

/// Commit with a parent (containerd 2.2's rebase): a parentless active snapshot adopts the
/// parent where the backend declares `rebase`; elsewhere the Commit fails NotImplemented and
/// changes nothing. Naming the parent the snapshot already has is no rebase and works on
/// every backend.
pub fn commit_rebase(ctx: &mut Ctx<'_>) {
    let can = ctx.capabilities().rebase;
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    sn.prepare("lone", "", &opt()).or_fail("prepare lone");
    let onto = |parent: &str| CommitOptions {
        parent: parent.to_string(),
        ..CommitOptions::default()
    };
    let r = sn.commit("rebased", "lone", &onto("base"));
    match (can, r) {
        (true, Ok(())) => {
            let info = sn.stat("rebased").or_fail("stat rebased");
            assert_eq!(info.parent, "base", "the rebased snapshot's parent");
            let e = sn
                .remove("base")
                .expect_err("remove the parent of a rebased snapshot");
            assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        }
        (true, Err(e)) => panic!("the harness says rebase, but Commit onto base failed: {e}"),
        (false, Ok(())) => panic!(
            "Commit onto a new parent succeeded, but the harness says rebase is false: a \
             full-copy layer would record a parent whose files it lacks (set rebase: true \
             only where layers are diffs)"
        ),
        (false, Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::NotImplemented, "refused rebase: {e}");
            assert_eq!(
                sn.stat("lone").or_fail("stat lone").kind,
                Kind::Active,
                "a refused rebase changes nothing"
            );
            assert_eq!(
                sn.stat("rebased").map(drop).unwrap_err().kind(),
                ErrorKind::NotFound
            );
            sn.commit("plain", "lone", &commit_opt())
                .or_fail("commit lone without a parent after the refusal");
        }
    }
    sn.prepare("child", "base", &opt()).or_fail("prepare child");
    sn.commit("same", "child", &onto("base"))
        .or_fail("commit naming the parent the snapshot has");
    assert_eq!(sn.stat("same").or_fail("stat same").parent, "base");
}

/// The labels containerd 2.3 puts on an unpack Prepare
/// (`containerd.io/snapshot/diff-id`, `containerd.io/snapshot/parent-chain-id`) are
/// stored and returned like any other: on the active snapshot, on the committed one when
/// the Commit carries them again (as containerd's unpacker does), in Walk and its filters.
pub fn unpack_labels(ctx: &mut Ctx<'_>) {
    const DIFF_ID: &str = "containerd.io/snapshot/diff-id";
    const PARENT_CHAIN_ID: &str = "containerd.io/snapshot/parent-chain-id";
    let diff = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let chain = "sha256:2e6f3b1e2b8a9a1c4a5e0d6b7c8f9e0a1b2c3d4e5f60718293a4b5c6d7e8f901";
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    let with = |extra: &[(&str, &str)]| {
        let mut l = labels([(super::GC_ROOT_LABEL, super::gc_root_time())]);
        for (k, v) in extra {
            l.insert(k.to_string(), v.to_string());
        }
        l
    };
    let ours = [(DIFF_ID, diff), (PARENT_CHAIN_ID, chain)];
    sn.prepare("extract", "base", &CreateOptions::with_labels(with(&ours)))
        .or_fail("prepare with unpack labels");
    let active = sn.stat("extract").or_fail("stat extract");
    assert_eq!(active.labels, with(&ours), "the active snapshot's labels");
    sn.commit("layer", "extract", &CommitOptions::with_labels(with(&ours)))
        .or_fail("commit with unpack labels");
    let committed = sn.stat("layer").or_fail("stat layer");
    assert_eq!(
        committed.labels,
        with(&ours),
        "the committed snapshot's labels"
    );
    assert_eq!(committed.parent, "base");
    let mut found = Vec::new();
    sn.walk(&[format!("labels.\"{DIFF_ID}\"=={diff}")], &mut |i| {
        found.push((i.name.clone(), i.labels.get(PARENT_CHAIN_ID).cloned()));
        Ok(())
    })
    .or_fail("walk by diff-id");
    assert_eq!(found, vec![("layer".to_string(), Some(chain.to_string()))]);
}

/// The kind directories of the store at `root`: its directories other than the
/// metastore's.
fn kind_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n != "metadata"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The numbered trees under the kind directories (of the root, or of a backend's root
/// one level down, as under a metadata layer).
fn trees(root: &Path) -> BTreeSet<PathBuf> {
    kind_dirs(root)
        .iter()
        .flat_map(|d| std::iter::once(d.clone()).chain(kind_dirs(d)))
        .collect::<Vec<_>>()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .map(|e| e.path())
        .collect()
}

/// The tree of the snapshot just made with `mounts`: the numbered tree under `root` that a
/// mount's source or options name (an overlay's upper layer, a bind's source), else the
/// one tree that was not in `before`.
fn tree_of(root: &Path, mounts: &[Mount], before: &BTreeSet<PathBuf>) -> PathBuf {
    let now = trees(root);
    let named: Vec<&PathBuf> = now
        .iter()
        .filter(|t| {
            let t = t.to_string_lossy();
            mounts.iter().any(|m| {
                std::iter::once(&m.source)
                    .chain(&m.options)
                    .any(|o| o.contains(&format!("{t}/")) || o.ends_with(t.as_ref()))
            })
        })
        .collect();
    // An overlay names its parents too: the new tree is the upper layer.
    let upper = named.iter().find(|t| {
        mounts
            .iter()
            .flat_map(|m| &m.options)
            .any(|o| o.starts_with(&format!("upperdir={}/", t.display())))
    });
    if let Some(t) = upper {
        return t.to_path_buf();
    }
    if let [t] = named.as_slice() {
        return t.to_path_buf();
    }
    let new: Vec<&PathBuf> = now.difference(before).collect();
    assert_eq!(new.len(), 1, "one new tree: {new:?} (mounts {mounts:?})");
    new[0].clone()
}

fn fsck(sn: &dyn Snapshotter, repair: bool) -> snapshot_core::fsck::FsckReport {
    sn.as_cleaner()
        .expect("the store has a cleaner")
        .fsck(repair)
        .or_fail(format!("fsck (repair {repair})"))
}

fn found(r: &snapshot_core::fsck::FsckReport) -> BTreeSet<(String, PathBuf)> {
    r.findings
        .iter()
        .map(|f| {
            (
                f.kind.as_str().to_string(),
                f.path.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// fsck: a busy healthy store has no findings; a generated set of faults of every class
/// is found whole (orphan trees with their sizes, stale staging trees, records whose tree
/// is gone, mounts of removed snapshots' trees, strangers' files); repair deletes exactly
/// the orphans and the staging trees; once the rest is fixed by hand the store is clean,
/// and suite cases run on it pass.
pub fn fsck_finds_every_fault(ctx: &mut Ctx<'_>) {
    use snapshot_core::fsck::FindingKind as F;
    let sn = ctx.sn();
    commit_base(sn, "fsck-base", "");
    if let Some(Err(e)) = sn.as_cleaner().map(|c| c.fsck(false)) {
        if e.kind() == ErrorKind::NotImplemented {
            eprintln!(
                "skipped: {}: the backend does not audit itself: {e}",
                ctx.test()
            );
            return;
        }
    }
    let clean = fsck(sn, false);
    assert!(clean.findings.is_empty(), "a new store: {clean:?}");
    assert!(clean.records >= 1, "{clean:?}");

    // Busy and healthy: four clients create, commit and remove while fsck runs.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let stop = &stop;
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, c) = (format!("busy-{t}-{i}"), format!("busy-{t}-{i}-c"));
                    sn.prepare(&k, "fsck-base", &opt()).or_fail("prepare");
                    if i % 2 == 0 {
                        sn.commit(&c, &k, &commit_opt()).or_fail("commit");
                        sn.view(&k, &c, &opt()).or_fail("view");
                        sn.remove(&k).or_fail("remove view");
                        sn.remove(&c).or_fail("remove committed");
                    } else {
                        sn.remove(&k).or_fail("remove");
                    }
                    i += 1;
                }
            });
        }
        // The clients stop however the checks end (a failed one panics).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for round in 0..15 {
            let r = fsck(sn, false);
            assert!(
                r.findings.is_empty(),
                "round {round}: false positives on a busy store: {:#?}",
                r.findings
            );
        }
    });
    if let Some(c) = sn.as_cleaner() {
        c.cleanup().or_fail("cleanup");
    }

    // A generated set of faults, several of each class.
    let mut rng = crate::rng::Rng::seeded(0xf5c);
    let mut count = |max: u64| 1 + rng.below(max) as usize;
    let (n_orphans, n_staging, n_gone, n_leaks, n_strangers) =
        (count(5), count(3), count(3), count(2), count(2));
    println!(
        "{}: injecting {n_orphans} orphans, {n_staging} staging trees, {n_gone} lost trees, \
         {n_leaks} leaked mounts, {n_strangers} unknown files",
        ctx.test()
    );
    let root = std::fs::canonicalize(ctx.root()).or_fail("canonical root");
    let mut want: BTreeSet<(String, PathBuf)> = BTreeSet::new();
    let mut add = |k: F, p: &Path| {
        want.insert((k.as_str().to_string(), p.to_path_buf()));
    };
    let mut gone = Vec::new();
    for i in 0..n_gone {
        let key = format!("fsck-gone-{i}");
        let before = trees(&root);
        let mounts = sn
            .prepare(&key, "fsck-base", &opt())
            .or_fail(format!("prepare {key}"));
        let tree = tree_of(&root, &mounts, &before);
        std::fs::remove_dir_all(&tree).or_fail(format!("delete {}", tree.display()));
        add(F::RecordWithoutDirectory, &tree);
        gone.push((key, tree));
    }
    let kind_dir = gone[0].1.parent().unwrap().to_path_buf();
    let mut guards = Vec::new();
    for i in 0..n_leaks {
        let key = format!("fsck-leak-{i}");
        let mounts = sn
            .prepare(&key, "fsck-base", &opt())
            .or_fail(format!("prepare {key}"));
        let target = ctx.work().join(format!("leak-{i}"));
        guards.push(ctx.mount(&mounts, &target));
        ctx.sn()
            .remove(&key)
            .or_fail(format!("remove the mounted {key}"));
        add(F::LeakedMount, &target);
    }
    let sn = ctx.sn();
    // Under a metadata layer the backend's snapshots go at the collection.
    if let Some(c) = sn.as_cleaner() {
        c.cleanup().or_fail("cleanup");
    }
    let mut orphans = Vec::new();
    for i in 0..n_orphans {
        let orphan = kind_dir.join((999_000 + i).to_string());
        std::fs::create_dir_all(orphan.join("fs")).or_fail("mkdir orphan");
        let size = (1 + i) << 18;
        std::fs::write(orphan.join("fs/data"), vec![7u8; size]).or_fail("write orphan data");
        add(F::OrphanDirectory, &orphan);
        orphans.push((orphan, size as u64));
    }
    let mut stagings = Vec::new();
    for i in 0..n_staging {
        let staging = kind_dir.join(format!("new-999999-{i}"));
        std::fs::create_dir_all(staging.join("fs")).or_fail("mkdir staging");
        std::fs::write(staging.join("fs/part"), b"half").or_fail("write staging");
        add(F::StaleStaging, &staging);
        stagings.push(staging);
    }
    let mut strangers = Vec::new();
    for i in 0..n_strangers {
        let stranger = kind_dir.join(format!("notes-{i}.txt"));
        std::fs::write(&stranger, b"mine").or_fail("write stranger");
        add(F::UnknownEntry, &stranger);
        strangers.push(stranger);
    }

    let r = fsck(sn, false);
    assert_eq!(
        found(&r),
        want,
        "every fault, nothing else: {:#?}",
        r.findings
    );
    for (orphan, size) in &orphans {
        let f = r
            .findings
            .iter()
            .find(|f| f.path.as_deref() == Some(orphan.as_path()))
            .unwrap();
        let held = f.usage.expect("an orphan is measured");
        assert!(
            held.size >= *size,
            "{} holds {size} bytes: {held:?}",
            orphan.display()
        );
    }
    // The backend's key (under a metadata layer, the name that layer gave it).
    for f in r
        .findings
        .iter()
        .filter(|f| f.kind == F::RecordWithoutDirectory)
    {
        assert!(f.key.is_some(), "names the record: {f:?}");
    }
    assert!(r
        .findings
        .iter()
        .all(|f| !f.repaired && !f.detail.is_empty()));
    assert!(
        orphans.iter().all(|(o, _)| o.exists()) && stagings.iter().all(|s| s.exists()),
        "a check changes nothing"
    );

    let r = fsck(sn, true);
    let repaired: BTreeSet<(String, PathBuf)> = r
        .findings
        .iter()
        .filter(|f| f.repaired)
        .map(|f| {
            (
                f.kind.as_str().to_string(),
                f.path.clone().unwrap_or_default(),
            )
        })
        .collect();
    let safe: BTreeSet<(String, PathBuf)> = want
        .iter()
        .filter(|(k, _)| {
            [F::OrphanDirectory.as_str(), F::StaleStaging.as_str()].contains(&k.as_str())
        })
        .cloned()
        .collect();
    assert_eq!(
        repaired, safe,
        "repair fixes exactly what is safe: {:#?}",
        r.findings
    );
    assert!(
        orphans.iter().all(|(o, _)| !o.exists()) && stagings.iter().all(|s| !s.exists()),
        "repaired trees are deleted"
    );
    assert!(strangers.iter().all(|s| s.exists()), "the rest is left");
    let left: BTreeSet<(String, PathBuf)> = found(&fsck(sn, false));
    assert_eq!(
        left,
        want.difference(&safe).cloned().collect(),
        "what repair left"
    );

    // What fsck leaves, fixed by hand; then the store is clean, and passes the suite's
    // cases that do not need an empty store.
    for g in guards {
        g.unmount();
    }
    for s in &strangers {
        std::fs::remove_file(s).or_fail("remove the stranger's file");
    }
    for (key, _) in &gone {
        sn.remove(key)
            .or_fail("remove a snapshot whose tree is gone");
    }
    if let Some(c) = sn.as_cleaner() {
        c.cleanup().or_fail("cleanup");
    }
    let r = fsck(sn, false);
    assert!(r.findings.is_empty(), "fixed: {:#?}", r.findings);
    ctx.reopen();
    assert!(fsck(ctx.sn(), false).findings.is_empty());
    for (name, case) in AFTER_REPAIR {
        println!("{}: {name} on the repaired store", ctx.test());
        case(ctx);
    }
    assert!(fsck(ctx.sn(), false).findings.is_empty(), "still clean");
}

type CaseFn = fn(&mut Ctx<'_>);

/// The cases [`fsck_finds_every_fault`] runs on the store it repaired: those that make
/// their own keys and do not count what the store holds.
const AFTER_REPAIR: [(&str, CaseFn); 6] = [
    ("basic", super::containerd::basic),
    ("transitivity", super::containerd::transitivity),
    ("remove", super::containerd::remove),
    (
        "deleted_files_in_child_snapshot",
        super::containerd::deleted_files_in_child_snapshot,
    ),
    ("view_readonly", super::containerd::view_readonly),
    ("restart_mounts", restart_mounts),
];

/// containerd 2.x's `containerd.io/snapshot/max-size` on an active snapshot is either
/// enforced or refused, never ignored:
/// - refused where the backend cannot cap the layer: FailedPrecondition (or
///   NotImplemented) naming the label, and nothing is built;
/// - enforced: writing into the mounted layer past the limit fails with ENOSPC or
///   EDQUOT, not before the layer holds the limit less a few blocks (the layer's own
///   directories count), and Usage never reports more than the limit.
///
/// Either way a malformed size is InvalidArgument, and a view, which cannot be written,
/// takes any valid size.
pub fn max_size_is_enforced_or_refused(ctx: &mut Ctx<'_>) {
    use snapshot_core::quota::MAX_SIZE_LABEL;
    const LIMIT: u64 = 1 << 20;
    let sn = ctx.sn();
    commit_base(sn, "base", "");
    let with = |v: &str| {
        let mut o = opt();
        o.labels.insert(MAX_SIZE_LABEL.to_string(), v.to_string());
        o
    };
    for bad in ["ten", "0", "-5", "1.5G"] {
        let e = sn
            .prepare("capped", "base", &with(bad))
            .map(drop)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}: {e}");
        assert!(e.to_string().contains(MAX_SIZE_LABEL), "{e}");
    }
    sn.view("v", "base", &with("1G"))
        .or_fail("a view with a size");
    for parent in ["", "base"] {
        let key = format!("capped-{}", parent.len());
        match sn.prepare(&key, parent, &with(&LIMIT.to_string())) {
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::FailedPrecondition | ErrorKind::NotImplemented
                    ),
                    "{e}"
                );
                assert!(e.to_string().contains(MAX_SIZE_LABEL), "{e}");
                assert_eq!(
                    sn.stat(&key).map(drop).unwrap_err().kind(),
                    ErrorKind::NotFound,
                    "nothing was made"
                );
            }
            Ok(mounts) => {
                let target = ctx.work().join(&key);
                std::fs::create_dir_all(&target).or_fail("mkdir");
                let m = ctx.mount(&mounts, &target);
                let fill = crate::fill_as_container(&m.path().join("big"), 2 * LIMIT);
                assert!(
                    fill.full(),
                    "{key}: wrote {} bytes past a limit of {LIMIT}: not enforced ({:?})",
                    fill.written,
                    fill.error
                );
                let written = fill.written;
                assert!(
                    written <= LIMIT && written + 16 * 4096 >= LIMIT,
                    "{key}: the write failed after {written} bytes, limit {LIMIT}"
                );
                m.unmount();
                let u = sn.usage(&key).or_fail("usage");
                assert!(
                    u.size <= LIMIT && u.size >= written,
                    "{key}: usage {u:?} after writing {written} bytes with a limit of {LIMIT}"
                );
            }
        }
    }
    sn.prepare("capped", "base", &opt())
        .or_fail("the key is still free");
}
