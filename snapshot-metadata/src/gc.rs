//! Garbage collection, as containerd's (`metadata/gc.go`, `metadata/db.go`), without its
//! long lock: the mark and the removal of unreachable records run in one metadata write
//! transaction; the backend's snapshots that no record names are then removed one by one,
//! leaves first, outside any transaction, skipping those a running call pinned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use snapshot_core::{ErrorKind, Info, Result};

use crate::layer::Metadata;
use crate::store::{Reader, Record};

/// The label that makes a snapshot a root of the collection (any non-empty value).
pub const ROOT_LABEL: &str = "containerd.io/gc.root";
/// The prefix of the labels that reference another snapshot of the same namespace:
/// `containerd.io/gc.ref.snapshot.<snapshotter>[/<anything>]` = the referenced key.
pub const REF_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

/// How many records one of the collection's write transactions deletes.
pub const SWEEP_BATCH: usize = 256;

/// What a collection removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collection {
    /// Records removed: (namespace, key), sorted.
    pub records: Vec<(String, String)>,
    /// Backend snapshots removed (backend keys), in the order they were removed.
    pub backend: Vec<String>,
    /// Backend snapshots left because a call was using them or the backend refused
    /// (a parent of a snapshot kept), with the reason.
    pub kept: Vec<(String, String)>,
    /// How long the collection's metadata write transactions took in all (the mark reads
    /// in a read transaction, which holds nobody back).
    pub metadata_time: Duration,
    /// The longest of those transactions: the longest a Prepare or Commit waited for it.
    pub longest_pause: Duration,
    /// How long the whole collection took.
    pub total_time: Duration,
}

/// The snapshots of `ns` that `rec` keeps alive: its parent and its references.
pub(crate) fn references<'a>(
    rec: &'a Record,
    snapshotter: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    let parent = (!rec.parent.is_empty()).then_some(rec.parent.as_str());
    let refs = rec.labels.iter().filter_map(move |(k, v)| {
        let rest = k.strip_prefix(REF_PREFIX)?;
        let sn = rest.split('/').next().unwrap_or("");
        (sn == snapshotter && !v.is_empty()).then_some(v.as_str())
    });
    parent.into_iter().chain(refs)
}

/// (namespace, key) pairs.
type Keys = HashSet<(String, String)>;

/// Every record of every namespace.
fn read_all<R: Reader>(tx: &R) -> Result<Vec<Record>> {
    let mut all = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = tx.batch(None, after.as_deref(), 1000)?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(last.clone());
        all.extend(batch.into_iter().map(|(_, r)| r));
    }
    Ok(all)
}

/// Every record, and the (namespace, key) of those no root reaches.
fn mark<R: Reader>(tx: &R, snapshotter: &str) -> Result<(Vec<Record>, Keys)> {
    let all = read_all(tx)?;
    let index: HashMap<(&str, &str), &Record> = all
        .iter()
        .map(|r| ((r.ns.as_str(), r.key.as_str()), r))
        .collect();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    // Roots: the labelled records, and what a Commit in flight consumes or builds on.
    let pending = tx.all_pending()?;
    let in_flight: HashSet<(&str, &str)> = pending
        .iter()
        .filter(|i| !i.active.is_empty())
        .flat_map(|i| {
            let ns = i.committed.ns.as_str();
            [(ns, i.active.as_str()), (ns, i.committed.parent.as_str())]
        })
        .collect();
    let mut stack: Vec<&Record> = all
        .iter()
        .filter(|r| {
            r.labels.get(ROOT_LABEL).is_some_and(|v| !v.is_empty())
                || in_flight.contains(&(r.ns.as_str(), r.key.as_str()))
        })
        .collect();
    for r in &stack {
        seen.insert((&r.ns, &r.key));
    }
    while let Some(r) = stack.pop() {
        for k in references(r, snapshotter) {
            if let Some(next) = index.get(&(r.ns.as_str(), k)) {
                if seen.insert((&next.ns, &next.key)) {
                    stack.push(next);
                }
            }
        }
    }
    let unreachable = all
        .iter()
        .filter(|r| !seen.contains(&(r.ns.as_str(), r.key.as_str())))
        .map(|r| (r.ns.clone(), r.key.clone()))
        .collect();
    Ok((all, unreachable))
}

/// The backend's snapshots, children before their parents (leaves first).
fn leaves_first(infos: Vec<Info>) -> Vec<Info> {
    let mut children: HashMap<String, Vec<usize>> = HashMap::new();
    let names: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut roots = Vec::new();
    for (n, i) in infos.iter().enumerate() {
        if i.parent.is_empty() || !names.contains(i.parent.as_str()) {
            roots.push(n);
        } else {
            children.entry(i.parent.clone()).or_default().push(n);
        }
    }
    let mut order = Vec::with_capacity(infos.len());
    // Iterative post-order.
    let mut stack: Vec<(usize, bool)> = roots.into_iter().map(|n| (n, false)).collect();
    while let Some((n, expanded)) = stack.pop() {
        if expanded {
            order.push(n);
            continue;
        }
        stack.push((n, true));
        if let Some(kids) = children.get(&infos[n].name) {
            stack.extend(kids.iter().map(|&k| (k, false)));
        }
    }
    let mut slots: Vec<Option<Info>> = infos.into_iter().map(Some).collect();
    order.into_iter().filter_map(|n| slots[n].take()).collect()
}

impl Metadata {
    /// Notes, while a collection runs, what `rec` (about to be written) keeps alive, so
    /// that the collection spares it. Called inside the transaction that writes `rec`.
    pub(crate) fn rescue(&self, rec: &Record) {
        if let Some(set) = self.rescues().as_mut() {
            // The record itself too: a write the mark did not see (an Update that roots it).
            set.insert((rec.ns.clone(), rec.key.clone()));
            for k in references(rec, &self.snapshotter) {
                set.insert((rec.ns.clone(), k.to_string()));
            }
        }
    }

    /// Runs `hook` with the batch's number before each of a collection's record-deleting
    /// transactions (for tests that race a call against a collection).
    #[doc(hidden)]
    pub fn on_sweep_batch(&self, hook: impl Fn(usize) + Send + Sync + 'static) {
        *self.sweep_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    fn rescues(&self) -> std::sync::MutexGuard<'_, Option<Keys>> {
        self.rescue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collects garbage: removes every record no root reaches (roots are snapshots
    /// labelled [`ROOT_LABEL`]; a snapshot reaches its parent and the snapshots its
    /// [`REF_PREFIX`] labels name), then every backend snapshot no record names, leaves
    /// first, then runs the backend's cleanup. The backend is swept only when something
    /// was removed since the last sweep (or since open). Prepare, Commit and Stat wait
    /// at most for the one metadata transaction.
    ///
    /// # Errors
    /// A failed metadata transaction or backend walk; a backend removal that fails for
    /// another reason than the snapshot having children ends the sweep with its error.
    pub fn collect(&self) -> Result<Collection> {
        self.run(false)
    }

    /// What [`collect`](Self::collect) would remove now, removing nothing.
    ///
    /// # Errors
    /// As [`collect`](Self::collect).
    pub fn plan(&self) -> Result<Collection> {
        self.run(true)
    }

    fn run(&self, dry_run: bool) -> Result<Collection> {
        let _one = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let mut out = Collection::default();
        let snapshotter = self.snapshotter.clone();
        // From before the mark's snapshot, every record written names what it keeps alive
        // (see `Metadata::rescue`): the sweep spares those.
        if !dry_run {
            // Under the writer lock, so a writer that found no collection running has
            // committed before the mark's snapshot is taken.
            self.write(|_| {
                *self.rescues() = Some(Keys::new());
                Ok(())
            })?;
        }
        let marked = self.read(|tx| mark(tx, &snapshotter));
        let swept = match (&marked, dry_run) {
            (Ok((all, unreachable)), false) => self.sweep_records(all, unreachable, &mut out),
            _ => Ok(Keys::new()),
        };
        *self.rescues() = None;
        let (all, mut unreachable) = marked?;
        if !dry_run {
            unreachable = swept?;
        }
        out.records = unreachable.iter().cloned().collect();
        out.records.sort();
        let dirty = if dry_run {
            true
        } else {
            self.dirty.swap(false, Ordering::SeqCst)
        };
        if dirty || !out.records.is_empty() {
            let swept = self
                .sweep_backend(dry_run, &all, &unreachable, &mut out)
                .and_then(|()| match (dry_run, self.backend.as_cleaner()) {
                    (false, Some(c)) => c.cleanup(),
                    _ => Ok(()),
                });
            if (swept.is_err() || !out.kept.is_empty()) && !dry_run {
                // The next collection sweeps again (what was kept may go then).
                self.dirty.store(true, Ordering::SeqCst);
            }
            swept?;
        }
        out.total_time = start.elapsed();
        Ok(out)
    }

    /// Deletes the `unreachable` records in transactions of [`SWEEP_BATCH`], each the only
    /// time the collection holds writers back; spares what a record written since the
    /// mark keeps alive, and what that keeps alive. Returns the keys deleted.
    fn sweep_records(
        &self,
        all: &[Record],
        unreachable: &Keys,
        out: &mut Collection,
    ) -> Result<Keys> {
        let mut candidates: HashMap<(String, String), &Record> = all
            .iter()
            .filter(|r| unreachable.contains(&(r.ns.clone(), r.key.clone())))
            .map(|r| ((r.ns.clone(), r.key.clone()), r))
            .collect();
        // Leaves first (deepest first along the parent edge): a kill between two batches,
        // or a child spared in a later batch, never leaves a record whose parent is gone.
        let depth = |k: &(String, String)| {
            let mut d = 0usize;
            let mut cur = candidates.get(k).map(|r| r.parent.clone());
            while let Some(p) = cur.filter(|p| !p.is_empty()) {
                d += 1;
                cur = candidates.get(&(k.0.clone(), p)).map(|r| r.parent.clone());
                if d > candidates.len() {
                    break;
                }
            }
            d
        };
        let mut order: Vec<(usize, (String, String))> =
            candidates.keys().map(|k| (depth(k), k.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let order: Vec<(String, String)> = order.into_iter().map(|(_, k)| k).collect();
        let mut deleted = Keys::new();
        for (n, chunk) in order.chunks(SWEEP_BATCH).enumerate() {
            if let Some(hook) = self
                .sweep_hook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                hook(n);
            }
            let t = Instant::now();
            self.write(|tx| {
                // Under the writer lock: no record is being written meanwhile.
                let rescued = self.rescued(&mut candidates);
                for k in chunk {
                    if rescued.contains(k) || !candidates.contains_key(k) {
                        continue;
                    }
                    let Some(r) = tx.record(&k.0, &k.1)? else {
                        continue; // removed meanwhile
                    };
                    // A child made or spared since the mark, or a Commit in flight: kept
                    // (the next collection looks again).
                    if tx.has_children(&k.0, &k.1)? || tx.pending(&k.0, &k.1)?.is_some() {
                        continue;
                    }
                    if !r.parent.is_empty() {
                        tx.unlink(&r.ns, &r.parent, &r.key)?;
                    }
                    tx.delete(&r.ns, &r.key)?;
                    deleted.insert(k.clone());
                }
                Ok(())
            })?;
            let pause = t.elapsed();
            out.metadata_time += pause;
            out.longest_pause = out.longest_pause.max(pause);
        }
        Ok(deleted)
    }

    /// The candidates that records written since the mark keep alive (directly or through
    /// other candidates); they are taken out of `candidates`.
    fn rescued(&self, candidates: &mut HashMap<(String, String), &Record>) -> Keys {
        let mut stack: Vec<(String, String)> = self
            .rescues()
            .as_ref()
            .map(|set| {
                set.iter()
                    .filter(|k| candidates.contains_key(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut rescued = Keys::new();
        while let Some(k) = stack.pop() {
            let Some(r) = candidates.remove(&k) else {
                continue;
            };
            rescued.insert(k);
            for next in references(r, &self.snapshotter) {
                stack.push((r.ns.clone(), next.to_string()));
            }
        }
        rescued
    }

    fn sweep_backend(
        &self,
        dry_run: bool,
        all: &[Record],
        unreachable: &Keys,
        out: &mut Collection,
    ) -> Result<()> {
        // From here on every key pinned stays spared until the sweep ends, even once its
        // pin is gone (its record may commit after the read below).
        {
            let mut p = self.pins();
            p.sweeping = true;
            p.touched.clear();
        }
        let r = self.sweep_backend_pinned(dry_run, all, unreachable, out);
        let mut p = self.pins();
        p.sweeping = false;
        p.touched.clear();
        r
    }

    fn sweep_backend_pinned(
        &self,
        dry_run: bool,
        all: &[Record],
        unreachable: &Keys,
        out: &mut Collection,
    ) -> Result<()> {
        // The backend first, then the records: a snapshot the walk saw was made before it
        // ended, so its maker pinned it before the read below.
        let mut infos = Vec::new();
        self.backend.walk(&[], &mut |i: &Info| {
            infos.push(i.clone());
            Ok(())
        })?;
        let mut named: HashSet<String> = if dry_run {
            all.iter()
                .filter(|r| !unreachable.contains(&(r.ns.clone(), r.key.clone())))
                .map(|r| r.bkey.clone())
                .collect()
        } else {
            self.read(|tx| read_all(tx))?
                .into_iter()
                .map(|r| r.bkey)
                .collect()
        };
        // What calls in flight name (their intents), besides their pins.
        for i in self.read(|tx| tx.all_pending())? {
            named.insert(i.committed.bkey);
        }
        for info in leaves_first(infos) {
            if named.contains(&info.name) {
                continue;
            }
            {
                let mut p = self.pins();
                if p.pinned.contains_key(&info.name) || p.touched.contains(&info.name) {
                    out.kept
                        .push((info.name, "in use by a running call".into()));
                    continue;
                }
                if dry_run {
                    out.backend.push(info.name);
                    continue;
                }
                p.removing.insert(info.name.clone());
            }
            let r = self.backend.remove(&info.name);
            self.pins().removing.remove(&info.name);
            match r {
                Ok(()) => out.backend.push(info.name),
                Err(e) if e.is(ErrorKind::FailedPrecondition) || e.is(ErrorKind::NotFound) => {
                    out.kept.push((info.name, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Metadata {
    /// Checks that the records and the backend agree: every record names a backend
    /// snapshot that exists, on the backend parent its parent's record names, and every
    /// parent-to-child link joins two records. Returns how many records there are.
    ///
    /// # Errors
    /// Unknown listing the first problems found; what the backend's Stat returns for
    /// another reason than NotFound.
    pub fn check(&self) -> Result<usize> {
        let all = self.read(|tx| read_all(tx))?;
        let index: HashMap<(&str, &str), &Record> = all
            .iter()
            .map(|r| ((r.ns.as_str(), r.key.as_str()), r))
            .collect();
        let mut problems = Vec::new();
        for r in &all {
            let info = match self.backend.stat(&r.bkey) {
                Ok(i) => i,
                Err(e) if e.is(ErrorKind::NotFound) => {
                    problems.push(format!(
                        "{:?} in {:?} names backend snapshot {:?}, which is missing",
                        r.key, r.ns, r.bkey
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let parent_bkey = if r.parent.is_empty() {
                Some(String::new())
            } else {
                index
                    .get(&(r.ns.as_str(), r.parent.as_str()))
                    .map(|p| p.bkey.clone())
            };
            match parent_bkey {
                None => problems.push(format!(
                    "{:?} in {:?} has parent {:?}, which has no record",
                    r.key, r.ns, r.parent
                )),
                Some(p) if p != info.parent => problems.push(format!(
                    "{:?} in {:?}: the backend's parent is {:?}, the record's parent's is {p:?}",
                    r.key, r.ns, info.parent
                )),
                Some(_) => {}
            }
        }
        // Each link must be the one a child's record implies.
        let implied: HashSet<(Vec<u8>, &str)> = all
            .iter()
            .filter(|r| !r.parent.is_empty())
            .map(|r| {
                (
                    crate::store::record_key(&r.ns, &r.parent).to_vec(),
                    r.key.as_str(),
                )
            })
            .collect();
        for (parent, child) in self.read(|tx| tx.links())? {
            if !implied.contains(&(parent, child.as_str())) {
                problems.push(format!(
                    "a parent-to-child link to {child:?} joins no records"
                ));
            }
        }
        if problems.is_empty() {
            return Ok(all.len());
        }
        let n = problems.len();
        problems.truncate(10);
        Err(snapshot_core::Error::unknown(format!(
            "namespace metadata is inconsistent ({n} problems): {}",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot_core::Kind;

    fn info(name: &str, parent: &str) -> Info {
        let mut i = Info::new(Kind::Committed, name);
        i.parent = parent.into();
        i
    }

    #[test]
    fn children_come_before_their_parents() {
        let order: Vec<String> = leaves_first(vec![
            info("a", ""),
            info("b", "a"),
            info("c", "b"),
            info("d", "a"),
            info("x", "gone"),
        ])
        .into_iter()
        .map(|i| i.name)
        .collect();
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert_eq!(order.len(), 5);
        assert!(pos("c") < pos("b") && pos("b") < pos("a") && pos("d") < pos("a"));
    }
}
