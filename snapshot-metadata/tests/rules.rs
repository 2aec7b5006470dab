//! The metadata layer's own rules, over the native backend: namespaces, back-links, the
//! label split, the remote-snapshot target flow and garbage collection.
#![cfg(target_os = "linux")]

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use snapshot_core::{labels, CommitOptions, CreateOptions, ErrorKind, Info, Kind, Snapshotter};
use snapshot_metadata::{Metadata, MetadataOptions, Namespaced, ROOT_LABEL, TARGET_LABEL};
use snapshot_native::{NativeConfig, NativeSnapshotter};

fn open(root: &Path) -> Arc<Metadata> {
    open_with(root, &MetadataOptions::default())
}

fn open_with(root: &Path, opts: &MetadataOptions) -> Arc<Metadata> {
    let config = NativeConfig {
        no_sync: true,
        ..NativeConfig::default()
    };
    let backend = NativeSnapshotter::open(&root.join("backend"), config).unwrap();
    Metadata::open(&root.join("namespaces"), Arc::new(backend), opts).unwrap()
}

fn opt() -> CreateOptions {
    CreateOptions::default()
}

fn commit_opt() -> CommitOptions {
    CommitOptions::default()
}

/// Every backend snapshot's name, sorted.
fn backend_names(md: &Metadata) -> Vec<String> {
    let mut v = Vec::new();
    md.backend()
        .walk(&[], &mut |i: &Info| {
            v.push(i.name.clone());
            Ok(())
        })
        .unwrap();
    v.sort();
    v
}

fn names(sn: &Namespaced) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    sn.walk(&[], &mut |i: &Info| {
        v.insert(i.name.clone());
        Ok(())
    })
    .unwrap();
    v
}

fn root_label() -> CreateOptions {
    CreateOptions::with_labels(labels([(ROOT_LABEL, "1")]))
}

#[test]
fn namespaces_are_required_and_follow_containerds_names() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    assert_eq!(
        md.namespace("").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        md.namespace("no/slash").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert!(md.namespace("k8s.io").is_ok());
}

#[test]
fn the_same_key_in_two_namespaces_is_two_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let (a, b) = (md.namespace("a").unwrap(), md.namespace("b").unwrap());
    let ma = a.prepare("k", "", &opt()).unwrap();
    let mb = b.prepare("k", "", &opt()).unwrap();
    assert_ne!(ma, mb, "each namespace has its own tree");
    assert_eq!(backend_names(&md), vec!["a/1/k", "b/1/k"]);
    assert_eq!(
        a.prepare("k", "", &opt()).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    a.commit("base", "k", &commit_opt()).unwrap();
    assert_eq!(
        b.stat("k").unwrap().kind,
        Kind::Active,
        "b's k is untouched"
    );
    assert_eq!(b.stat("base").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        b.prepare("x", "base", &opt()).unwrap_err().kind(),
        ErrorKind::NotFound,
        "a parent of another namespace is not one"
    );
    b.remove("k").unwrap();
    assert_eq!(a.stat("base").unwrap().kind, Kind::Committed);
    assert_eq!(names(&a), BTreeSet::from(["base".to_string()]));
    assert!(names(&b).is_empty());
}

#[test]
fn a_parent_with_children_in_its_namespace_cannot_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare("a", "", &opt()).unwrap();
    ns.commit("base", "a", &commit_opt()).unwrap();
    ns.prepare("child", "base", &opt()).unwrap();
    let e = ns.remove("base").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.to_string().contains("\"base\""), "{e}");
    // Committing the child moves the link to the committed name.
    ns.commit("top", "child", &commit_opt()).unwrap();
    assert_eq!(
        ns.remove("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    ns.remove("top").unwrap();
    ns.remove("base").unwrap();
    // Remove only unlinked: the backend keeps both until a collection.
    assert_eq!(backend_names(&md).len(), 2);
    let done = md.collect().unwrap();
    assert_eq!(done.backend.len(), 2, "{done:?}");
    assert!(backend_names(&md).is_empty());
}

#[test]
fn only_inherited_labels_reach_the_backend_and_reads_merge_both() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    let l = labels([
        ("containerd.io/snapshot/x", "to backend"),
        ("mine", "layer only"),
        (ROOT_LABEL, "1"),
    ]);
    ns.prepare("a", "", &CreateOptions::with_labels(l.clone()))
        .unwrap();
    let backend = md.backend().stat("default/1/a").unwrap();
    assert_eq!(
        backend.labels,
        labels([("containerd.io/snapshot/x", "to backend")])
    );
    assert_eq!(ns.stat("a").unwrap().labels, l);
    // Walk filters the merged view.
    let mut seen = Vec::new();
    ns.walk(&["labels.mine==\"layer only\"".into()], &mut |i: &Info| {
        seen.push(i.name.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec!["a"]);
    // Update changes the layer's labels; the backend sees only inherited ones.
    let mut info = Info::new(Kind::Active, "a");
    info.labels = labels([("mine", "changed"), ("containerd.io/snapshot/x", "y")]);
    let got = ns
        .update(
            &info,
            &[
                "labels.mine".into(),
                "labels.containerd.io/snapshot/x".into(),
            ],
        )
        .unwrap();
    assert_eq!(got.labels.get("mine").map(String::as_str), Some("changed"));
    assert_eq!(
        md.backend().stat("default/1/a").unwrap().labels,
        labels([("containerd.io/snapshot/x", "y")])
    );
    assert_eq!(
        ns.update(&info, &["parent".into()]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn a_target_committed_in_one_namespace_is_shared_by_another_without_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open_with(
        tmp.path(),
        &MetadataOptions {
            share_targets: true,
            ..MetadataOptions::default()
        },
    );
    let (n1, n2) = (md.namespace("n1").unwrap(), md.namespace("n2").unwrap());
    let target = labels([(TARGET_LABEL, "sha256:layer1")]);
    commit_target(&n1, "sha256:layer1");
    let before = backend_names(&md);

    // Another namespace unpacking the same layer: AlreadyExists, and it has the layer.
    let e = n2
        .prepare("extract-2", "", &CreateOptions::with_labels(target.clone()))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let info = n2.stat("sha256:layer1").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(
        n2.stat("extract-2").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(backend_names(&md), before, "no backend copy was made");
    // In the same namespace, the target already being there is AlreadyExists at once.
    assert_eq!(
        n1.prepare("extract-3", "", &CreateOptions::with_labels(target.clone()))
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    // Both namespaces build on it; the backend snapshot goes only when neither uses it.
    n2.prepare("c2", "sha256:layer1", &root_label()).unwrap();
    n1.remove("sha256:layer1").unwrap();
    md.collect().unwrap();
    assert!(
        backend_names(&md).contains(&before[0]),
        "n2 still uses the layer: {:?}",
        backend_names(&md)
    );
    n2.remove("c2").unwrap();
    n2.remove("sha256:layer1").unwrap();
    md.collect().unwrap();
    assert!(backend_names(&md).is_empty(), "{:?}", backend_names(&md));
}

/// Unpacks the layer `target` in `sn` as containerd's unpacker does: Prepare labelled
/// with the target, Commit under the target's name with the label.
fn commit_target(sn: &Namespaced, target: &str) {
    let l = labels([(TARGET_LABEL, target)]);
    sn.prepare("extract-1", "", &CreateOptions::with_labels(l.clone()))
        .unwrap();
    sn.commit(
        target,
        "extract-1",
        &CommitOptions {
            labels: l,
            parent: String::new(),
        },
    )
    .unwrap();
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One snapshot of the generated forest, committed in order.
struct Made {
    ns: usize,
    key: String,
    parent: Option<usize>,
    root: bool,
    // The earlier snapshot a gc.ref label names.
    reference: Option<usize>,
}

#[test]
fn a_collection_removes_exactly_what_no_root_reaches() {
    const N: usize = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let spaces = [md.namespace("one").unwrap(), md.namespace("two").unwrap()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut made: Vec<Made> = Vec::new();
    for i in 0..N {
        let ns = rng.below(2) as usize;
        let same: Vec<usize> = (0..made.len()).filter(|&j| made[j].ns == ns).collect();
        let pick =
            |rng: &mut Rng| (!same.is_empty()).then(|| same[rng.below(same.len() as u64) as usize]);
        let parent = if rng.below(3) > 0 {
            pick(&mut rng)
        } else {
            None
        };
        let root = rng.below(20) == 0;
        let reference = if rng.below(10) == 0 {
            pick(&mut rng)
        } else {
            None
        };
        let key = format!("s{i}");
        let mut l = snapshot_core::Labels::new();
        if root {
            l.insert(ROOT_LABEL.into(), "yes".into());
        }
        if let Some(r) = reference {
            l.insert(
                format!("containerd.io/gc.ref.snapshot.overlayfs/{i}"),
                made[r].key.clone(),
            );
        }
        let sn = &spaces[ns];
        let parent_key = parent.map(|p| made[p].key.clone()).unwrap_or_default();
        sn.prepare(&format!("{key}-a"), &parent_key, &opt())
            .unwrap();
        sn.commit(
            &key,
            &format!("{key}-a"),
            &CommitOptions {
                labels: l,
                parent: String::new(),
            },
        )
        .unwrap();
        made.push(Made {
            ns,
            key,
            parent,
            root,
            reference,
        });
    }
    // The reference: what the roots reach through parents and references.
    let mut keep: HashSet<usize> = HashSet::new();
    let mut stack: Vec<usize> = (0..N).filter(|&i| made[i].root).collect();
    while let Some(i) = stack.pop() {
        if keep.insert(i) {
            stack.extend(made[i].parent);
            stack.extend(made[i].reference);
        }
    }
    assert!(
        keep.len() > 10 && keep.len() < N - 10,
        "a useful forest: {}",
        keep.len()
    );

    let plan = md.plan().unwrap();
    assert_eq!(plan.records.len(), N - keep.len());
    assert_eq!(backend_names(&md).len(), N, "a dry run removes nothing");
    let done = md.collect().unwrap();
    let expect: BTreeSet<(String, String)> = (0..N)
        .filter(|i| !keep.contains(i))
        .map(|i| (spaces[made[i].ns].name().to_string(), made[i].key.clone()))
        .collect();
    assert_eq!(
        done.records.iter().cloned().collect::<BTreeSet<_>>(),
        expect
    );
    assert_eq!(done.backend.len(), N - keep.len(), "kept: {:?}", done.kept);
    for (s, sn) in spaces.iter().enumerate() {
        let want: BTreeSet<String> = keep
            .iter()
            .filter(|&&i| made[i].ns == s)
            .map(|&i| made[i].key.clone())
            .collect();
        assert_eq!(names(sn), want);
    }
    // And their trees: one directory per kept snapshot.
    let trees = std::fs::read_dir(tmp.path().join("backend/snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .count();
    assert_eq!(trees, keep.len());
    assert_eq!(md.check().unwrap(), keep.len());
    // A second collection finds nothing.
    let again = md.collect().unwrap();
    assert!(
        again.records.is_empty() && again.backend.is_empty(),
        "{again:?}"
    );
}

#[test]
fn a_backend_snapshot_no_record_names_is_collected_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let md = open(tmp.path());
        let ns = md.namespace("default").unwrap();
        ns.prepare("kept", "", &root_label()).unwrap();
        // What a crash between the backend's Prepare and the record leaves.
        md.backend()
            .prepare("default/99/orphan", "", &opt())
            .unwrap();
        md.close().unwrap();
    }
    let md = open(tmp.path());
    assert_eq!(
        md.check().unwrap(),
        1,
        "an unnamed backend snapshot is no inconsistency"
    );
    let done = md.collect().unwrap();
    assert_eq!(done.backend, vec!["default/99/orphan".to_string()]);
    assert!(md.namespace("default").unwrap().stat("kept").is_ok());
    // A record whose backend snapshot went is one.
    md.backend().remove("default/1/kept").unwrap();
    let e = md.check().unwrap_err();
    assert!(
        e.to_string().contains("\"kept\"") && e.to_string().contains("missing"),
        "{e}"
    );
}

/// Waits up to 10 s for `cond`.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn the_scheduler_collects_after_removals_and_not_when_idle() {
    use snapshot_metadata::{GcPolicy, Scheduler};
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    ns.prepare("kept", "", &root_label()).unwrap();
    ns.prepare("gone", "", &root_label()).unwrap();
    let policy = GcPolicy {
        deletion_threshold: 1,
        startup_delay: std::time::Duration::from_millis(10),
        ..GcPolicy::default()
    };
    let sched = Scheduler::start(Arc::clone(&md), policy).unwrap();
    assert!(
        eventually(|| sched.stats().collections >= 1),
        "the startup collection"
    );
    assert_eq!(backend_names(&md).len(), 2, "roots are kept");
    ns.remove("gone").unwrap();
    assert!(
        eventually(|| backend_names(&md) == vec!["default/1/kept".to_string()]),
        "a removal past the threshold is collected without being asked: {:?}",
        backend_names(&md)
    );
    // The collection removes from the backend before it counts itself: wait for the count.
    assert!(
        eventually(|| sched.stats().backend_removed >= 1),
        "the collection that removed it is counted"
    );
    let after = sched.stats().collections;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        sched.stats().collections,
        after,
        "nothing changed: no collection"
    );
    let now = sched.collect_now().unwrap();
    assert!(now.backend.is_empty() && now.records.is_empty());
    drop(sched);
}

#[test]
fn a_snapshot_made_on_garbage_during_a_collection_keeps_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let ns = md.namespace("default").unwrap();
    for i in 0..(3 * snapshot_metadata::gc::SWEEP_BATCH) {
        ns.prepare(&format!("garbage-{i:05}"), "", &opt()).unwrap();
    }
    // Unreachable, and last in the sweep's order.
    ns.prepare("zz-parent-a", "", &opt()).unwrap();
    ns.commit("zz-parent", "zz-parent-a", &commit_opt())
        .unwrap();
    // After the mark, before the parent's batch: a rooted child on the parent.
    let result = Arc::new(std::sync::Mutex::new(None));
    {
        let (ns, result) = (md.namespace("default").unwrap(), Arc::clone(&result));
        md.on_sweep_batch(move |n| {
            if n == 1 {
                *result.lock().unwrap() = Some(ns.prepare("child", "zz-parent", &root_label()));
            }
        });
    }
    let done = md.collect().unwrap();
    let child = result.lock().unwrap().take().expect("the hook ran");
    assert!(child.is_ok(), "{child:?}");
    assert!(
        ns.stat("zz-parent").is_ok(),
        "the parent of a kept child was collected"
    );
    assert!(!done
        .records
        .contains(&("default".into(), "zz-parent".into())));
    md.check().unwrap();
    assert!(md.plan().unwrap().records.len() <= 1);
}

/// A backend that provides remote snapshots itself, as containerd's test backend does: a
/// Prepare labelled with a target answers AlreadyExists when a committed snapshot with
/// that target and the same parent exists.
struct Remote(Arc<dyn Snapshotter>);

impl Snapshotter for Remote {
    fn stat(&self, key: &str) -> snapshot_core::Result<Info> {
        self.0.stat(key)
    }
    fn update(&self, info: &Info, paths: &[String]) -> snapshot_core::Result<Info> {
        self.0.update(info, paths)
    }
    fn usage(&self, key: &str) -> snapshot_core::Result<snapshot_core::Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> snapshot_core::Result<Vec<snapshot_core::Mount>> {
        self.0.mounts(key)
    }
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> snapshot_core::Result<Vec<snapshot_core::Mount>> {
        if let Some(t) = opts.labels.get(TARGET_LABEL) {
            let mut found = false;
            self.0.walk(&[], &mut |i: &Info| {
                found |= i.kind == Kind::Committed
                    && i.parent == parent
                    && i.labels.get(TARGET_LABEL) == Some(t);
                Ok(())
            })?;
            if found {
                return Err(snapshot_core::Error::already_exists(format!(
                    "target {t} exists"
                )));
            }
        }
        self.0.prepare(key, parent, opts)
    }
    fn view(
        &self,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> snapshot_core::Result<Vec<snapshot_core::Mount>> {
        self.0.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> snapshot_core::Result<()> {
        self.0.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> snapshot_core::Result<()> {
        self.0.remove(key)
    }
    fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(&Info) -> snapshot_core::Result<()>,
    ) -> snapshot_core::Result<()> {
        self.0.walk(filters, f)
    }
    fn close(&self) -> snapshot_core::Result<()> {
        self.0.close()
    }
}

#[test]
fn a_target_the_backend_provides_is_recorded_and_an_unasked_already_exists_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let config = NativeConfig {
        no_sync: true,
        ..NativeConfig::default()
    };
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&tmp.path().join("backend"), config).unwrap());
    // A layer the backend has of its own (a remote snapshotter's lazily pulled layer).
    let target = labels([(TARGET_LABEL, "sha256:remote")]);
    native.prepare("remote-a", "", &opt()).unwrap();
    native
        .commit(
            "remote/sha256:remote",
            "remote-a",
            &CommitOptions {
                labels: target.clone(),
                parent: String::new(),
            },
        )
        .unwrap();
    let md = Metadata::open(
        &tmp.path().join("namespaces"),
        Arc::new(Remote(Arc::clone(&native))),
        &MetadataOptions::default(),
    )
    .unwrap();
    let ns = md.namespace("default").unwrap();
    let e = ns
        .prepare("extract", "", &CreateOptions::with_labels(target.clone()))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let info = ns.stat("sha256:remote").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(
        info.labels.get(TARGET_LABEL).map(String::as_str),
        Some("sha256:remote")
    );
    // Nothing was made for the asked key, and the record points at the backend's layer.
    assert_eq!(backend_names(&md), vec!["remote/sha256:remote".to_string()]);
    md.check().unwrap();
    // A backend's AlreadyExists without a target is Unknown: here the backend already has
    // the key the layer derives next ("default" used sequence 1 above, "x" takes 2).
    native.prepare("default/3/k", "", &opt()).unwrap();
    let clash = md.namespace("default").unwrap();
    clash.prepare("x", "", &opt()).unwrap();
    let e = clash.prepare("k", "", &opt()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unknown, "{e}");
}

#[test]
fn without_share_targets_another_namespace_unpacks_its_own_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let md = open(tmp.path());
    let (n1, n2) = (md.namespace("n1").unwrap(), md.namespace("n2").unwrap());
    let target = labels([(TARGET_LABEL, "sha256:layer1")]);
    commit_target(&n1, "sha256:layer1");
    // containerd's rule: only the backend's AlreadyExists shares; native never answers it.
    n2.prepare("extract-2", "", &CreateOptions::with_labels(target))
        .unwrap();
    assert_eq!(backend_names(&md).len(), 2);
}
