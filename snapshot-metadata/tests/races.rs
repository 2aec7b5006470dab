//! Races between calls and a collection, and the target flow, with a backend whose hooks
//! fix the interleavings: each ends as some serial order of the calls would.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use snapshot_core::{
    labels, CommitOptions, CreateOptions, ErrorKind, Info, Kind, Mount, Snapshotter, Usage,
};
use snapshot_metadata::{Metadata, MetadataOptions, ROOT_LABEL, TARGET_LABEL};
use snapshot_native::{NativeConfig, NativeSnapshotter};

type Hook = Box<dyn FnOnce(&str) + Send>;

/// A backend with one-shot hooks around some calls, and a Walk sorted by name.
struct Hooked {
    inner: Arc<dyn Snapshotter>,
    after_prepare: Mutex<Option<Hook>>,
    before_commit: Mutex<Option<Hook>>,
    before_remove: Mutex<Option<Hook>>,
}

fn take(h: &Mutex<Option<Hook>>) -> Option<Hook> {
    h.lock().unwrap().take()
}

impl Snapshotter for Hooked {
    fn stat(&self, key: &str) -> snapshot_core::Result<Info> {
        self.inner.stat(key)
    }
    fn update(&self, info: &Info, paths: &[String]) -> snapshot_core::Result<Info> {
        self.inner.update(info, paths)
    }
    fn usage(&self, key: &str) -> snapshot_core::Result<Usage> {
        self.inner.usage(key)
    }
    fn mounts(&self, key: &str) -> snapshot_core::Result<Vec<Mount>> {
        self.inner.mounts(key)
    }
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        o: &CreateOptions,
    ) -> snapshot_core::Result<Vec<Mount>> {
        let m = self.inner.prepare(key, parent, o)?;
        if let Some(h) = take(&self.after_prepare) {
            h(key);
        }
        Ok(m)
    }
    fn view(
        &self,
        key: &str,
        parent: &str,
        o: &CreateOptions,
    ) -> snapshot_core::Result<Vec<Mount>> {
        self.inner.view(key, parent, o)
    }
    fn commit(&self, name: &str, key: &str, o: &CommitOptions) -> snapshot_core::Result<()> {
        if let Some(h) = take(&self.before_commit) {
            h(key);
        }
        self.inner.commit(name, key, o)
    }
    fn remove(&self, key: &str) -> snapshot_core::Result<()> {
        if let Some(h) = take(&self.before_remove) {
            h(key);
        }
        self.inner.remove(key)
    }
    fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(&Info) -> snapshot_core::Result<()>,
    ) -> snapshot_core::Result<()> {
        let mut all = Vec::new();
        self.inner.walk(filters, &mut |i: &Info| {
            all.push(i.clone());
            Ok(())
        })?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        for i in &all {
            f(i)?;
        }
        Ok(())
    }
    fn close(&self) -> snapshot_core::Result<()> {
        self.inner.close()
    }
}

fn open(root: &Path) -> (Arc<Metadata>, Arc<Hooked>) {
    let config = NativeConfig {
        no_sync: true,
        ..NativeConfig::default()
    };
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&root.join("backend"), config).unwrap());
    let hooked = Arc::new(Hooked {
        inner: native,
        after_prepare: Mutex::new(None),
        before_commit: Mutex::new(None),
        before_remove: Mutex::new(None),
    });
    let backend: Arc<dyn Snapshotter> = hooked.clone();
    let md = Metadata::open(
        &root.join("namespaces"),
        backend,
        &MetadataOptions::default(),
    )
    .unwrap();
    (md, hooked)
}

fn rooted() -> CreateOptions {
    CreateOptions::with_labels(labels([(ROOT_LABEL, "1")]))
}

/// A Prepare whose record commits after the collection's read of the records but before
/// the collection reaches its backend key keeps its backend snapshot: a key pinned during
/// the sweep stays spared after its pin is gone. Any serial order gives a live snapshot.
#[test]
fn a_prepare_recorded_during_the_backend_sweep_keeps_its_backend_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, hooked) = open(tmp.path());
    // Garbage the sweep removes first (Walk is sorted; the last root is removed first).
    hooked
        .inner
        .prepare("zz-garbage", "", &CreateOptions::default())
        .unwrap();

    let (made_tx, made_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    *hooked.after_prepare.lock().unwrap() = Some(Box::new(move |_| {
        made_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    }));
    let ns = md.namespace("default").unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let p = std::thread::spawn(move || {
        let r = ns.prepare("new", "", &rooted());
        done_tx.send(()).unwrap();
        r
    });
    made_rx.recv().unwrap();
    *hooked.before_remove.lock().unwrap() = Some(Box::new(move |_| {
        go_tx.send(()).unwrap();
        done_rx.recv().unwrap(); // the Prepare recorded "new" and dropped its pin
    }));
    let done = md.collect().unwrap();
    let prepared = p.join().unwrap();
    assert!(prepared.is_ok(), "{prepared:?}");
    let ns = md.namespace("default").unwrap();
    assert!(
        ns.stat("new").is_ok(),
        "a rooted snapshot whose Prepare succeeded is gone from the backend: {:?}; collection {done:?}",
        ns.stat("new")
    );
    md.check().unwrap();
}

/// An Update adding containerd.io/gc.root to a snapshot after the mark keeps it: a record
/// written during a collection is spared. (Collect then Update would be NotFound.)
#[test]
fn an_update_that_roots_a_snapshot_during_a_collection_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare("x", "", &CreateOptions::default()).unwrap();
    let result = Arc::new(Mutex::new(None));
    {
        let (ns, result) = (md.namespace("default").unwrap(), Arc::clone(&result));
        md.on_sweep_batch(move |n| {
            if n == 0 {
                let mut i = Info::new(Kind::Active, "x");
                i.labels = labels([(ROOT_LABEL, "1")]);
                *result.lock().unwrap() = Some(ns.update(&i, &[format!("labels.{ROOT_LABEL}")]));
            }
        });
    }
    md.collect().unwrap();
    let updated = result.lock().unwrap().take().unwrap();
    assert!(updated.is_ok(), "{updated:?}");
    assert!(
        ns.stat("x").is_ok(),
        "Update returned a rooted x, then the collection deleted it: {:?}",
        ns.stat("x")
    );
}

/// A Prepare of the name a Commit is making, while the Commit's backend step runs: one of
/// them is AlreadyExists, as in any serial order.
#[test]
fn prepare_and_commit_of_the_same_name_do_not_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, hooked) = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare("a", "", &CreateOptions::default()).unwrap();
    let result = Arc::new(Mutex::new(None));
    {
        let (other, result) = (md.namespace("default").unwrap(), Arc::clone(&result));
        *hooked.before_commit.lock().unwrap() = Some(Box::new(move |_| {
            *result.lock().unwrap() = Some(other.prepare("c", "", &CreateOptions::default()));
        }));
    }
    let committed = ns.commit("c", "a", &CommitOptions::default());
    let prepared = result.lock().unwrap().take().unwrap();
    assert!(
        committed.is_err() || prepared.is_err(),
        "both succeeded: the Prepare's active \"c\" is now {:?}",
        ns.stat("c").map(|i| i.kind)
    );
}

/// A namespace commits a snapshot labelled with another namespace's layer target: by
/// default the other namespace's unpack is not given it (containerd asks only the
/// backend, and native's Prepare succeeds: the caller unpacks its own copy).
#[test]
fn a_target_committed_in_one_namespace_is_not_given_to_another_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = open(tmp.path());
    let (evil, victim) = (
        md.namespace("evil").unwrap(),
        md.namespace("victim").unwrap(),
    );
    let target = labels([(TARGET_LABEL, "sha256:public-base-layer-chainid")]);
    let m = evil.prepare("x", "", &CreateOptions::default()).unwrap();
    std::fs::write(Path::new(&m[0].source).join("planted"), b"evil").unwrap();
    evil.commit(
        "whatever",
        "x",
        &CommitOptions {
            labels: target.clone(),
            parent: String::new(),
        },
    )
    .unwrap();
    let got = victim.prepare("extract-1", "", &CreateOptions::with_labels(target));
    let err = got.as_ref().err().map(|e| e.kind());
    assert_eq!(
        err,
        None,
        "the victim's unpack was short-circuited ({got:?}) onto evil's snapshot: {:?}",
        victim
            .stat("sha256:public-base-layer-chainid")
            .map(|i| i.labels)
    );
}

/// A backend snapshot the sweep keeps (a parent whose child a Prepare in flight made) and
/// that no record names once that Prepare fails is swept by the next collection.
#[test]
fn a_kept_orphan_is_swept_by_the_next_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, hooked) = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare("p-a", "", &CreateOptions::default()).unwrap();
    ns.commit("p", "p-a", &CommitOptions::default()).unwrap();
    md.collect().unwrap(); // takes everything but clears the open's dirty
    ns.prepare("p-a", "", &rooted()).unwrap();
    ns.commit("p", "p-a", &CommitOptions::default()).unwrap();

    let (made_tx, made_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    *hooked.after_prepare.lock().unwrap() = Some(Box::new(move |_| {
        made_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    }));
    let t = {
        let ns = md.namespace("default").unwrap();
        std::thread::spawn(move || ns.prepare("child", "p", &CreateOptions::default()))
    };
    made_rx.recv().unwrap();
    ns.remove("p").unwrap(); // no link yet: allowed (ordered: Remove, then Prepare fails)
    let first = md.collect().unwrap();
    go_tx.send(()).unwrap();
    let child = t.join().unwrap();
    assert_eq!(child.unwrap_err().kind(), ErrorKind::NotFound);
    let second = md.collect().unwrap();
    let left = md.plan().unwrap();
    assert!(
        left.backend.is_empty(),
        "first {first:?}\nsecond {second:?}\nstill garbage after two collections: {:?}",
        left.backend
    );
}

/// containerd's WriteLabels drops labels with empty values (boltutil/helpers.go), so a
/// Prepare labelled {"a": ""} stats without "a".
#[test]
fn prepare_drops_empty_label_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare(
        "k",
        "",
        &CreateOptions::with_labels(labels([("a", ""), ("b", "1")])),
    )
    .unwrap();
    let l = ns.stat("k").unwrap().labels;
    assert!(!l.contains_key("a"), "{l:?}");
}
