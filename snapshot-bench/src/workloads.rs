//! The workloads: each opens the backend on a fresh root under the bench root, runs its
//! calls, times each, and measures the floors it is compared with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshots::{CommitOptions, CreateOptions, Error, Labels, Mount, Snapshotter};

use crate::floors;
use crate::{io_err, Args, Doing, Result, Row};

/// Sizes of a run.
struct Sizes {
    chain: usize,
    meta: usize,
    store: usize,
    files: usize,
    reps: usize,
    clients: usize,
    client_chain: usize,
    scale: usize,
    garbage: usize,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                chain: 20,
                meta: 200,
                store: 500,
                files: 2_000,
                reps: 3,
                clients: 4,
                client_chain: 5,
                scale: 10_000,
                garbage: 1_000,
            }
        } else {
            Sizes {
                chain: 100,
                meta: 2_000,
                store: 5_000,
                files: 20_000,
                reps: 5,
                clients: 8,
                client_chain: 20,
                scale: 100_000,
                garbage: 10_000,
            }
        }
    }
}

/// How the workloads reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// In process, through the library.
    Library,
    /// Through `snapshotd`'s service on a unix socket (gRPC), as containerd calls it.
    Daemon,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Library => "library",
            Via::Daemon => "daemon",
        }
    }
}

thread_local! {
    static VIA: std::cell::Cell<Via> = const { std::cell::Cell::new(Via::Library) };
}

fn open(args: &Args, name: &str) -> Result<Box<dyn Snapshotter>> {
    let via = VIA.with(|v| v.get());
    let root = args.root.join(format!("{name}-{}", via.name()));
    if root.exists() {
        let _ = snapshots::snapshot_core::layout::remove_tree(&root);
    }
    reopen(args, &root)
}

/// Opens the backend durably on `root` as it is, through the current [`Via`].
fn reopen(args: &Args, root: &Path) -> Result<Box<dyn Snapshotter>> {
    let via = VIA.with(|v| v.get());
    let sn = snapshots::open(args.backend, root, &snapshots::Options::default())
        .doing(|| format!("open {} at {}", args.backend, root.display()))?;
    match via {
        Via::Library => Ok(sn),
        Via::Daemon => Ok(Box::new(crate::metered::Counted::new(
            snapshotd::server::Background::serve_with_metrics(sn)
                .doing(|| "serve on a socket".into())?,
        ))),
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// Mounts `mounts` at `target`, runs `f` on the mounted tree, unmounts.
fn through_mount<T>(
    mounts: &[Mount],
    target: &Path,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    std::fs::create_dir_all(target).map_err(io_err("create", target))?;
    snapshots::mount::mount_all(mounts, target)
        .doing(|| format!("mount at {}", target.display()))?;
    let r = f(target);
    snapshots::mount::unmount_all(target).doing(|| format!("unmount {}", target.display()))?;
    r
}

fn write_files(dir: &Path, n: usize, tag: &str) -> Result {
    for i in 0..n {
        let f = dir.join(format!("{tag}-{i}"));
        std::fs::write(&f, tag.as_bytes()).map_err(io_err("write", &f))?;
    }
    Ok(())
}

/// The directory a backend walks for an active snapshot's usage: the bind source
/// (native), the upper directory (overlay); `None` for a device mount (btrfs), whose
/// tree is walked through a mount.
fn own_tree(mounts: &[Mount]) -> Option<PathBuf> {
    for m in mounts {
        if let Some(u) = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
            return Some(PathBuf::from(u));
        }
        if m.kind == "bind" {
            return Some(PathBuf::from(&m.source));
        }
    }
    None
}

pub fn all(args: &Args) -> Result<Vec<Row>> {
    let s = Sizes::of(args.quick);
    let scratch = args.root.join("floors");
    std::fs::create_dir_all(&scratch).map_err(io_err("create", &scratch))?;
    let lmdb = floors::lmdb(&scratch, s.meta.min(500))?;
    let dirs: &[&str] = match args.backend {
        snapshots::Backend::Overlay => &["fs", "work"],
        _ => &[],
    };
    let publish = floors::publish(&scratch, dirs, s.meta.min(500))?;
    let prepare_floor = publish + lmdb.write;
    println!(
        "floors: durable LMDB transaction {:?}, read transaction {:?}, publish (mkdir, rename, fsync) {:?}",
        lmdb.write, lmdb.read, publish
    );
    let mut rows = Vec::new();
    for via in [Via::Library, Via::Daemon] {
        println!("-- through the {}", via.name());
        VIA.with(|v| v.set(via));
        let start = rows.len();
        if args.runs("chain") {
            rows.extend(chain(args, &s, prepare_floor, lmdb.write)?);
        }
        if args.runs("meta") {
            rows.extend(meta(args, &s, prepare_floor, lmdb)?);
        }
        if args.runs("store") {
            rows.extend(store(args, &s, lmdb.read, lmdb.write)?);
        }
        if args.runs("big-tree") {
            rows.extend(big_tree(args, &s)?);
        }
        if args.runs("concurrent") {
            rows.extend(concurrent(args, &s)?);
        }
        if args.runs("scale") {
            rows.extend(scale(args, &s)?);
        }
        if args.runs("fsck") {
            rows.extend(fsck(args, &s)?);
        }
        if args.runs("quota") {
            rows.extend(quota(args, &s)?);
        }
        // The metadata layer is a library: measured in process.
        if args.runs("gc") && via == Via::Library {
            rows.extend(gc(args, &s)?);
        }
        for r in &mut rows[start..] {
            r.via = via.name();
        }
    }
    Ok(rows)
}

/// `chain`: layers, each a Prepare on the previous commit, a mount, 10 files written, an
/// unmount and a Commit; then Mounts of an active snapshot at depth 1 and at the top.
fn chain(
    args: &Args,
    s: &Sizes,
    prepare_floor: Duration,
    write_floor: Duration,
) -> Result<Vec<Row>> {
    println!("chain: {} layers", s.chain);
    let sn = open(args, "chain")?;
    let target = args.root.join("chain-mnt");
    let (mut prep, mut commit, mut layer) = (Vec::new(), Vec::new(), Vec::new());
    let mut parent = String::new();
    for i in 0..s.chain {
        let (key, name) = (format!("l{i}-active"), format!("l{i}"));
        let start = Instant::now();
        let (m, t) = timed(|| sn.prepare(&key, &parent, &CreateOptions::default()));
        let m = m.doing(|| format!("prepare {key}"))?;
        prep.push(t);
        through_mount(&m, &target, |dir| write_files(dir, 10, &name))?;
        let (r, t) = timed(|| sn.commit(&name, &key, &CommitOptions::default()));
        r.doing(|| format!("commit {name}"))?;
        commit.push(t);
        layer.push(start.elapsed());
        parent = name;
    }
    let mut rows = vec![
        Row::new(
            "chain",
            "prepare on the previous layer",
            prep,
            Some(prepare_floor),
        ),
        Row::new("chain", "commit of 10 files", commit, Some(write_floor)),
        Row::new(
            "chain",
            "raw: durable txn after 10 files written",
            floors::lmdb_after_writes(&args.root.join("floors"), s.chain)?,
            Some(write_floor),
        ),
        Row::new(
            "chain",
            "layer (prepare, mount, write, commit)",
            layer,
            None,
        ),
    ];
    for (label, p) in [("1", "l0".to_string()), ("top", parent.clone())] {
        let key = format!("mounts-{label}");
        sn.prepare(&key, &p, &CreateOptions::default())
            .doing(|| format!("prepare {key}"))?;
        let mut v = Vec::new();
        for _ in 0..s.meta {
            let (r, t) = timed(|| sn.mounts(&key));
            std::hint::black_box(r.doing(|| format!("mounts {key}"))?);
            v.push(t);
        }
        let depth = if label == "1" { 1 } else { s.chain };
        rows.push(Row::new(
            "mounts",
            format!("mounts at depth {depth}"),
            v,
            None,
        ));
    }
    sn.close().doing(|| "close".into())?;
    Ok(rows)
}

/// `meta`: Prepare without parent, Stat, Remove, many times.
fn meta(args: &Args, s: &Sizes, prepare_floor: Duration, lmdb: floors::Lmdb) -> Result<Vec<Row>> {
    println!("meta: {} × prepare, stat, remove", s.meta);
    let sn = open(args, "meta")?;
    let (mut p, mut st, mut rm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..s.meta {
        let key = format!("m{i}");
        let (r, t) = timed(|| sn.prepare(&key, "", &CreateOptions::default()));
        r.doing(|| format!("prepare {key}"))?;
        p.push(t);
        let (r, t) = timed(|| sn.stat(&key));
        r.doing(|| format!("stat {key}"))?;
        st.push(t);
        let (r, t) = timed(|| sn.remove(&key));
        r.doing(|| format!("remove {key}"))?;
        rm.push(t);
    }
    sn.close().doing(|| "close".into())?;
    Ok(vec![
        Row::new("meta", "prepare without parent", p, Some(prepare_floor)),
        Row::new("meta", "stat", st, Some(lmdb.read)),
        Row::new("meta", "remove (empty tree)", rm, Some(lmdb.write)),
    ])
}

/// A store of many committed snapshots with labels: Stat, Walk of all, Walk with a label
/// filter matching 1 %, and Remove there against Remove in a store of 10.
fn store(args: &Args, s: &Sizes, read_floor: Duration, write_floor: Duration) -> Result<Vec<Row>> {
    println!("store: {} committed snapshots with labels", s.store);
    let sn = open(args, "store")?;
    for i in 0..s.store {
        let key = format!("s{i}-active");
        sn.prepare(&key, "", &CreateOptions::default())
            .doing(|| format!("prepare {key}"))?;
        let labels: Labels = [
            ("containerd.io/gc.root".to_string(), "yes".to_string()),
            (
                "tag".to_string(),
                if i % 100 == 0 { "rare" } else { "common" }.to_string(),
            ),
            ("n".to_string(), i.to_string()),
        ]
        .into_iter()
        .collect();
        sn.commit(&format!("s{i}"), &key, &CommitOptions::with_labels(labels))
            .doing(|| format!("commit s{i}"))?;
    }
    let mut stat = Vec::new();
    for i in 0..s.meta {
        let key = format!("s{}", (i * 7919) % s.store);
        let (r, t) = timed(|| sn.stat(&key));
        r.doing(|| format!("stat {key}"))?;
        stat.push(t);
    }
    let mut walk_all = Vec::new();
    let mut walk_rare = Vec::new();
    for _ in 0..s.reps {
        for (filters, v) in [
            (vec![], &mut walk_all),
            (vec!["labels.tag==rare".to_string()], &mut walk_rare),
        ] {
            let mut n = 0;
            let (r, t) = timed(|| {
                sn.walk(&filters, &mut |_| {
                    n += 1;
                    Ok(())
                })
            });
            r.doing(|| "walk".into())?;
            v.push(t);
        }
    }
    let remove_at = |sn: &dyn Snapshotter, tag: &str| -> Result<Vec<Duration>> {
        let mut v = Vec::new();
        // Warm up (untimed): a fresh store's file grows with its first pages.
        for i in 0..s.meta.min(500) {
            let key = format!("{tag}-warm-{i}");
            sn.prepare(&key, "", &CreateOptions::default())
                .doing(|| format!("prepare {key}"))?;
            sn.remove(&key).doing(|| format!("remove {key}"))?;
        }
        for i in 0..s.meta.min(500) {
            let key = format!("{tag}-{i}");
            sn.prepare(&key, "", &CreateOptions::default())
                .doing(|| format!("prepare {key}"))?;
            let (r, t) = timed(|| sn.remove(&key));
            r.doing(|| format!("remove {key}"))?;
            v.push(t);
        }
        Ok(v)
    };
    let big = remove_at(&*sn, "big")?;
    sn.close().doing(|| "close".into())?;
    let small_sn = open(args, "store-10")?;
    for i in 0..10 {
        small_sn
            .prepare(&format!("x{i}"), "", &CreateOptions::default())
            .doing(|| format!("prepare x{i}"))?;
    }
    let small = remove_at(&*small_sn, "small")?;
    small_sn.close().doing(|| "close".into())?;
    let n = s.store;
    Ok(vec![
        Row::new("store", format!("stat at {n}"), stat, Some(read_floor)),
        Row::new("store", format!("walk all {n}"), walk_all, None),
        Row::new("store", "walk, label filter matching 1 %", walk_rare, None),
        Row::new("store", format!("remove at {n}"), big, Some(write_floor)),
        Row::new("store", "remove at 10", small, Some(write_floor)),
    ])
}

/// `usage` and `remove` of an active snapshot holding many files.
fn big_tree(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    println!("usage, remove: {} files", s.files);
    let sn = open(args, "big")?;
    let target = args.root.join("big-mnt");
    let (mut usage, mut walk_floor, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    let mut serial = Vec::new();
    for rep in 0..s.reps.min(3) {
        let key = format!("big-{rep}");
        let m = sn
            .prepare(&key, "", &CreateOptions::default())
            .doing(|| format!("prepare {key}"))?;
        through_mount(&m, &target, |dir| floors::populate(&dir.join("t"), s.files))?;
        rustix::fs::sync();
        for _ in 0..s.reps {
            let (r, t) = timed(|| sn.usage(&key));
            r.doing(|| format!("usage {key}"))?;
            usage.push(t);
        }
        match own_tree(&m) {
            Some(tree) => {
                walk_floor.push(floors::walk(&tree)?);
                // The same walk as Usage's, on one thread: what the parallel walk gains.
                for _ in 0..s.reps {
                    let (r, t) = timed(|| snapshots::usage::usage_with(&tree, 1));
                    r.doing(|| format!("serial usage walk of {}", tree.display()))?;
                    serial.push(t);
                }
            }
            None => walk_floor.push(through_mount(&m, &target, floors::walk)?),
        }
        let (r, t) = timed(|| {
            sn.remove(&key)?;
            match sn.as_cleaner() {
                Some(c) => c.cleanup(),
                None => Ok(()),
            }
        });
        r.doing(|| format!("remove {key}"))?;
        remove.push(t);
    }
    sn.close().doing(|| "close".into())?;
    let scratch = args.root.join("floors");
    let remove_floor = floors::remove(&scratch, s.files)?;
    walk_floor.sort_unstable();
    let n = s.files;
    let floor = walk_floor[walk_floor.len() / 2];
    let mut rows = vec![Row::new(
        "usage",
        format!("usage of {n} files"),
        usage,
        Some(floor),
    )];
    if !serial.is_empty() {
        rows.push(Row::new(
            "usage",
            "raw: the same walk on one thread",
            serial,
            Some(floor),
        ));
    }
    rows.extend([Row::new(
        "remove",
        format!("remove + cleanup of {n} files"),
        remove,
        Some(remove_floor),
    )]);
    Ok(rows)
}

/// `quota` (only with `--only quota`, on a filesystem with project quotas): Usage of an
/// active snapshot's layer holding 20 files and holding 200,000 (20,000 with `--quick`),
/// which the quota answers in one call; the walk of the same layer is each row's floor.
fn quota(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    let mounts = snapshots::mount::mountinfo().doing(|| "read mountinfo".into())?;
    if !snapshots::snapshot_core::quota::project_quotas_in(&mounts, &args.root) {
        return Err(crate::BenchError::Usage(format!(
            "the quota workload needs {} on xfs or ext4 mounted with prjquota (cargo xtask \
             bench --only quota runs it in a virtual machine that has them)",
            args.root.display()
        )));
    }
    let big = if s.reps <= 3 { 20_000 } else { 200_000 };
    let sn = open(args, "quota")?;
    let target = args.root.join("quota-mnt");
    let mut rows = Vec::new();
    for n in [20, big] {
        let key = format!("quota-{n}");
        let m = sn
            .prepare(&key, "", &CreateOptions::default())
            .doing(|| format!("prepare {key}"))?;
        through_mount(&m, &target, |dir| floors::populate(&dir.join("t"), n))?;
        rustix::fs::sync();
        let mut usage = Vec::new();
        for _ in 0..200 {
            let (r, t) = timed(|| sn.usage(&key));
            r.doing(|| format!("usage {key}"))?;
            usage.push(t);
        }
        let tree =
            own_tree(&m).ok_or_else(|| crate::BenchError::Usage("quota: overlay only".into()))?;
        let mut walks: Vec<Duration> =
            (0..3).map(|_| floors::walk(&tree)).collect::<Result<_>>()?;
        walks.sort_unstable();
        println!("usage from the quota, {n} files: walk {:?}", walks[1]);
        rows.push(Row::new(
            "quota",
            format!("usage of {n} files from the quota"),
            usage,
            Some(walks[1]),
        ));
        sn.remove(&key).doing(|| format!("remove {key}"))?;
    }
    if let Some(c) = sn.as_cleaner() {
        c.cleanup().doing(|| "cleanup".into())?;
    }
    sn.close().doing(|| "close".into())?;
    Ok(rows)
}

/// `concurrent`: several clients each building a chain at once, against one client.
fn concurrent(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    println!(
        "concurrent: {} clients × {} layers",
        s.clients, s.client_chain
    );
    let sn: Arc<dyn Snapshotter> = Arc::from(open(args, "concurrent")?);
    let run = |clients: usize| -> Result<Duration> {
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let sn = Arc::clone(&sn);
                let target = args.root.join(format!("conc-mnt-{clients}-{c}"));
                let layers = s.client_chain;
                std::thread::spawn(move || -> Result {
                    let mut parent = String::new();
                    for i in 0..layers {
                        let (key, name) = (
                            format!("c{clients}-{c}-{i}-a"),
                            format!("c{clients}-{c}-{i}"),
                        );
                        let m = sn
                            .prepare(&key, &parent, &CreateOptions::default())
                            .doing(|| format!("prepare {key}"))?;
                        through_mount(&m, &target, |dir| write_files(dir, 10, &name))?;
                        sn.commit(&name, &key, &CommitOptions::default())
                            .doing(|| format!("commit {name}"))?;
                        parent = name;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a client panicked")?;
        }
        Ok(start.elapsed())
    };
    let one = run(1)?;
    let many = run(s.clients)?;
    sn.close().doing(|| "close".into())?;
    let per_layer = |d: Duration, layers: usize| d / layers as u32;
    let one_rate = per_layer(one, s.client_chain);
    let many_rate = per_layer(many, s.client_chain * s.clients);
    println!(
        "concurrent: {:.0} layers/s with 1 client, {:.0} with {} ({:.2}×)",
        1.0 / one_rate.as_secs_f64(),
        1.0 / many_rate.as_secs_f64(),
        s.clients,
        one_rate.as_secs_f64() / many_rate.as_secs_f64()
    );
    Ok(vec![
        Row::new(
            "concurrent",
            "time per layer, 1 client",
            vec![one_rate],
            None,
        ),
        Row::new(
            "concurrent",
            format!("time per layer, {} clients", s.clients),
            vec![many_rate],
            Some(one_rate),
        ),
    ])
}

/// The resident memory of this process, from `/proc/self/status`, in KiB.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `scale`: Prepare and Stat in a store of 1,000 committed snapshots and in one of
/// `s.scale` (populated fast with `no_sync`, then reopened durable), and the resident
/// memory after a Walk of the large one.
fn scale(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    let via = VIA.with(|v| v.get());
    let mut rows = Vec::new();
    for n in [1_000, s.scale] {
        println!("scale: {n} committed snapshots");
        let root = args.root.join(format!("scale-{n}-{}", via.name()));
        if root.exists() {
            let _ = snapshots::snapshot_core::layout::remove_tree(&root);
        }
        let mut fast = snapshots::Options::default();
        fast.common.no_sync = true;
        let sn = snapshots::open(args.backend, &root, &fast)
            .doing(|| format!("open {} at {}", args.backend, root.display()))?;
        for i in 0..n {
            let key = format!("s{i}-a");
            sn.prepare(&key, "", &CreateOptions::default())
                .doing(|| format!("prepare {key}"))?;
            sn.commit(&format!("s{i}"), &key, &CommitOptions::default())
                .doing(|| format!("commit s{i}"))?;
        }
        sn.close().doing(|| "close".into())?;
        drop(sn);
        let before = resident_kib();
        let sn = reopen(args, &root)?;
        let (mut prep, mut stat) = (Vec::new(), Vec::new());
        for j in 0..s.meta.min(500) {
            let key = format!("p{j}");
            let (r, t) = timed(|| sn.prepare(&key, "", &CreateOptions::default()));
            r.doing(|| format!("prepare {key}"))?;
            prep.push(t);
        }
        for j in 0..s.meta {
            let key = format!("s{}", (j * 7919) % n);
            let (r, t) = timed(|| sn.stat(&key));
            r.doing(|| format!("stat {key}"))?;
            stat.push(t);
        }
        let mut seen = 0;
        sn.walk(&[], &mut |_| {
            seen += 1;
            Ok(())
        })
        .doing(|| "walk".into())?;
        let after = resident_kib();
        println!(
            "scale: {n} snapshots (walked {seen}): resident {before} KiB before opening, {after} KiB after the walk ({} via)",
            via.name()
        );
        sn.close().doing(|| "close".into())?;
        drop(sn);
        // The next stores need the inodes.
        let _ = snapshots::snapshot_core::layout::remove_tree(&root);
        rows.push(Row::new("scale", format!("prepare at {n}"), prep, None));
        rows.push(Row::new("scale", format!("stat at {n}"), stat, None));
    }
    // The large store's rows against the small one's: cost must not grow with the store.
    let (small_prep, small_stat) = (rows[0].median, rows[1].median);
    rows[2].floor = Some(small_prep);
    rows[3].floor = Some(small_stat);
    Ok(rows)
}

/// `gc`: the namespaced metadata layer collecting `garbage` unreachable snapshots while
/// another thread runs a steady stream of Prepare (rooted, so kept) and Stat: their
/// latencies against the same stream with no collection running; the collection's
/// metadata transaction (the only time it holds writers back) and its whole run; then the
/// background scheduler's pause share over a stream of Prepare and Remove, against
/// containerd's budget of 20 ms in every second.
/// `fsck`: an audit of a store of committed layers and active snapshots on them, and
/// what Prepare and Stat cost while audits run back to back (against the same stream
/// without them). Every audit of the busy, healthy store must find nothing.
fn fsck(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    let n = s.store;
    println!("fsck: {n} committed layers, {n} active snapshots on them");
    let sn = open(args, "fsck")?;
    for i in 0..n {
        let key = format!("f{i}-a");
        sn.prepare(&key, "", &CreateOptions::default())
            .doing(|| format!("prepare {key}"))?;
        sn.commit(&format!("f{i}"), &key, &CommitOptions::default())
            .doing(|| format!("commit f{i}"))?;
        sn.prepare(
            &format!("f{i}-c"),
            &format!("f{i}"),
            &CreateOptions::default(),
        )
        .doing(|| format!("prepare f{i}-c"))?;
    }
    let sn: &dyn Snapshotter = &*sn;
    let audit = || -> snapshots::Result<()> {
        let r = sn
            .as_cleaner()
            .ok_or_else(|| Error::not_implemented("fsck: no cleaner"))?
            .fsck(false)?;
        match r.findings.first() {
            None => Ok(()),
            Some(f) => Err(Error::unknown(format!(
                "fsck found {} things on a healthy store, the first: {f:?}",
                r.findings.len()
            ))),
        }
    };
    let mut whole = Vec::new();
    for _ in 0..s.reps {
        let (r, t) = timed(audit);
        r.doing(|| "fsck".into())?;
        whole.push(t);
    }
    let stream =
        |tag: &str, prep: &mut Vec<Duration>, stat: &mut Vec<Duration>, rounds: usize| -> Result {
            for i in 0..rounds {
                let key = format!("{tag}-{i}");
                let (r, t) = timed(|| sn.prepare(&key, "f0", &CreateOptions::default()));
                r.doing(|| format!("prepare {key}"))?;
                prep.push(t);
                let (r, t) = timed(|| sn.stat("f1"));
                r.doing(|| "stat".into())?;
                stat.push(t);
                sn.remove(&key).doing(|| format!("remove {key}"))?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
    let rounds = s.meta.min(200);
    let (mut prep0, mut stat0) = (Vec::new(), Vec::new());
    stream("quiet", &mut prep0, &mut stat0, rounds)?;
    let (mut prep1, mut stat1) = (Vec::new(), Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let audits = std::thread::scope(|sc| -> Result<usize> {
        let auditor = sc.spawn(|| -> Result<usize> {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                audit().doing(|| "fsck during the stream".into())?;
                k += 1;
            }
            Ok(k)
        });
        let streamed = stream("busy", &mut prep1, &mut stat1, rounds);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let k = auditor.join().expect("the auditor panicked");
        streamed?;
        k
    })?;
    println!("fsck: {audits} audits ran during the stream, none found anything");
    let (quiet_prep, quiet_stat) = (median_of(&prep0), median_of(&stat0));
    let rows = vec![
        Row::new("fsck", format!("audit of {} snapshots", 2 * n), whole, None),
        Row::new("fsck", "prepare, no audit", prep0, None),
        Row::new("fsck", "prepare during audits", prep1, Some(quiet_prep)),
        Row::new("fsck", "stat, no audit", stat0, None),
        Row::new("fsck", "stat during audits", stat1, Some(quiet_stat)),
    ];
    sn.close().doing(|| "close".into())?;
    Ok(rows)
}

fn gc(args: &Args, s: &Sizes) -> Result<Vec<Row>> {
    use snapshots::metadata::{GcPolicy, Metadata, MetadataOptions, Scheduler, ROOT_LABEL};
    println!("gc: {} unreachable snapshots", s.garbage);
    let root = args.root.join("gc");
    if root.exists() {
        let _ = snapshots::snapshot_core::layout::remove_tree(&root);
    }
    let backend = snapshots::open(
        args.backend,
        &root.join("backend"),
        &snapshots::Options::default(),
    )
    .doing(|| format!("open {} at {}", args.backend, root.display()))?;
    let md = Metadata::open(
        &root.join("namespaces"),
        std::sync::Arc::from(backend),
        &MetadataOptions::default(),
    )
    .doing(|| "open the metadata layer".into())?;
    let ns = md.namespace("bench").doing(|| "namespace".into())?;
    for i in 0..s.garbage {
        ns.prepare(&format!("garbage-{i}"), "", &CreateOptions::default())
            .doing(|| format!("prepare garbage-{i}"))?;
    }
    let kept = CreateOptions::with_labels(snapshots::labels([(ROOT_LABEL, "1")]));
    ns.prepare("stat-me", "", &kept)
        .doing(|| "prepare stat-me".into())?;
    // One round of the stream: a Prepare and a Stat, timed apart.
    let stream =
        |tag: &str, prep: &mut Vec<Duration>, stat: &mut Vec<Duration>, n: usize| -> Result {
            for i in 0..n {
                let (r, t) = timed(|| ns.prepare(&format!("{tag}-{i}"), "", &kept));
                r.doing(|| format!("prepare {tag}-{i}"))?;
                prep.push(t);
                let (r, t) = timed(|| ns.stat("stat-me"));
                r.doing(|| "stat".into())?;
                stat.push(t);
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
    let n = s.meta.min(500);
    let (mut prep0, mut stat0) = (Vec::new(), Vec::new());
    stream("quiet", &mut prep0, &mut stat0, n)?;
    let (mut prep1, mut stat1) = (Vec::new(), Vec::new());
    let collected = std::thread::scope(|sc| -> Result<snapshots::metadata::Collection> {
        let collector = sc.spawn(|| md.collect());
        // The stream runs for as long as the collection does (at least n rounds).
        let mut round = 0;
        while !collector.is_finished() || round < n {
            stream(&format!("busy{round}"), &mut prep1, &mut stat1, 1)?;
            round += 1;
        }
        collector
            .join()
            .expect("the collector panicked")
            .doing(|| "collect".into())
    })?;
    println!(
        "gc: collected {} records and {} backend snapshots: metadata transactions {:?} (the longest {:?}), whole collection {:?}",
        collected.records.len(),
        collected.backend.len(),
        collected.metadata_time,
        collected.longest_pause,
        collected.total_time
    );
    let quiet_prep = median_of(&prep0);
    let quiet_stat = median_of(&stat0);
    let mut rows = vec![
        Row::new("gc", "prepare, no collection", prep0, None),
        Row::new(
            "gc",
            "prepare during the collection",
            prep1,
            Some(quiet_prep),
        ),
        Row::new("gc", "stat, no collection", stat0, None),
        Row::new("gc", "stat during the collection", stat1, Some(quiet_stat)),
        Row::new(
            "gc",
            format!("collection: metadata transactions ({})", s.garbage),
            vec![collected.metadata_time],
            None,
        ),
        Row::new(
            "gc",
            "collection: the longest of them",
            vec![collected.longest_pause],
            None,
        ),
        Row::new(
            "gc",
            format!(
                "collection: whole ({} backend removals)",
                collected.backend.len()
            ),
            vec![collected.total_time],
            None,
        ),
    ];
    // The scheduler on containerd's policy, over a stream that makes garbage.
    let sched = Scheduler::start(std::sync::Arc::clone(&md), GcPolicy::default())
        .doing(|| "start the scheduler".into())?;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(if args.quick { 2 } else { 10 }) {
        // Rooted until removed: an unlabelled snapshot is garbage at once.
        let key = format!("churn-{i}");
        ns.prepare(&key, "", &kept)
            .doing(|| format!("prepare {key}"))?;
        ns.remove(&key).doing(|| format!("remove {key}"))?;
        i += 1;
    }
    let st = sched.stats();
    drop(sched);
    println!(
        "gc: scheduler: {} collections in {:?} over {i} prepare+remove, paused {:?}: {:.2} % of the time (budget 2 %)",
        st.collections,
        st.elapsed,
        st.paused,
        st.pause_share() * 100.0
    );
    rows.push(Row::new(
        "gc",
        "scheduler: pause per collection",
        vec![st.paused / st.collections.max(1) as u32],
        None,
    ));
    md.close().doing(|| "close".into())?;
    let _ = snapshots::snapshot_core::layout::remove_tree(&root);
    Ok(rows)
}

fn median_of(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}
