//! [`Metadata`], the layer in front of a backend, and [`Namespaced`], its view of one
//! namespace, which is a [`Snapshotter`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use snapshot_core::filter::FilterSet;
use snapshot_core::keyspace::{truncate_for_message, validate_key, validate_labels};
use snapshot_core::{
    Cleaner, CommitOptions, CreateOptions, Error, ErrorKind, Info, Kind, Labels, Mount, Result,
    Snapshotter, Usage,
};

use crate::namespace::validate_namespace;
use crate::store::{Db, Intent, Lmdb, ReadTxn, Reader, Record, WriteTxn};

/// The label naming the committed snapshot a Prepare may find instead of unpacking
/// (containerd's remote-snapshot target).
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";
/// The prefix of the labels a backend sees besides [`TARGET_LABEL`]; every other label
/// stays in the metadata layer.
pub const INHERITED_PREFIX: &str = "containerd.io/snapshot/";

/// How many records a Walk reads per transaction.
const WALK_BATCH: usize = 100;

/// The labels a backend sees: [`TARGET_LABEL`] and those under [`INHERITED_PREFIX`]
/// (containerd's `FilterInheritedLabels`).
pub fn inherited_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.as_str() == TARGET_LABEL || k.starts_with(INHERITED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels a record keeps: all but those with an empty value (containerd drops them).
fn stored_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Options of [`Metadata::open`].
#[derive(Debug, Clone)]
pub struct MetadataOptions {
    /// The name references use for the backend in `containerd.io/gc.ref.snapshot.<name>`
    /// labels (containerd's snapshotter name, e.g. `overlayfs`).
    pub snapshotter: String,
    /// The size of the database's memory map in bytes.
    pub map_size: usize,
    /// Whether a Prepare labelled with a target that another namespace committed (with
    /// the same label, on the same parent) shares that snapshot instead of making one.
    /// Off by default, as in containerd (which shares only what the backend itself
    /// answers AlreadyExists for): it trusts every namespace, since any namespace can
    /// commit content labelled with another's layer.
    pub share_targets: bool,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            snapshotter: "overlayfs".into(),
            map_size: 1 << 30,
            share_targets: false,
        }
    }
}

/// Backend keys in use by calls that have not recorded them yet, and those a collection
/// is removing: a collection never removes a pinned key, and a call never pins one that
/// is being removed.
#[derive(Default)]
pub(crate) struct Pins {
    pub pinned: HashMap<String, usize>,
    pub removing: HashSet<String>,
    // While a collection sweeps the backend, every key pinned since it began: spared even
    // once unpinned (its record may have committed after the sweep read the records).
    pub sweeping: bool,
    pub touched: HashSet<String>,
}

/// containerd's metadata layer over one backend: namespaces, parent-to-children links,
/// the split of labels between the layer and the backend, remote-snapshot targets and
/// garbage collection. Open it with [`Metadata::open`], then work in a namespace through
/// [`Metadata::namespace`].
pub struct Metadata {
    pub(crate) db: Db,
    pub(crate) backend: Arc<dyn Snapshotter>,
    pub(crate) snapshotter: String,
    pub(crate) pins: Mutex<Pins>,
    // A Remove (or a collection's own removals) happened since the last backend sweep;
    // set at open, since a crash may have left backend snapshots nobody references.
    pub(crate) dirty: AtomicBool,
    // One collection at a time.
    pub(crate) collecting: Mutex<()>,
    // Changes, for the scheduler.
    pub(crate) events: crate::scheduler::Events,
    // While a collection sweeps: what records written since its mark keep alive.
    pub(crate) rescue: Mutex<Option<HashSet<(String, String)>>>,
    pub(crate) sweep_hook: Mutex<Option<SweepHook>>,
    pub(crate) share_targets: bool,
    closed: AtomicBool,
    path: PathBuf,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("path", &self.path)
            .finish()
    }
}

pub(crate) type SweepHook = Box<dyn Fn(usize) + Send + Sync>;

/// A pin on a backend key, released when dropped.
pub(crate) struct Pin<'a> {
    md: &'a Metadata,
    bkey: String,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut p = self.md.pins();
        if let Some(n) = p.pinned.get_mut(&self.bkey) {
            *n -= 1;
            if *n == 0 {
                p.pinned.remove(&self.bkey);
            }
        }
    }
}

impl Metadata {
    /// Opens (or creates) the metadata database in `dir` in front of `backend`.
    ///
    /// # Errors
    /// Unavailable when `dir` is open already in this process; Unknown for I/O.
    pub fn open(
        dir: &Path,
        backend: Arc<dyn Snapshotter>,
        opts: &MetadataOptions,
    ) -> Result<Arc<Metadata>> {
        let db = Db::open(dir, opts.map_size)?;
        let md = Arc::new(Metadata {
            db,
            backend,
            snapshotter: opts.snapshotter.clone(),
            pins: Mutex::default(),
            dirty: AtomicBool::new(true),
            collecting: Mutex::new(()),
            events: Default::default(),
            rescue: Mutex::new(None),
            sweep_hook: Mutex::new(None),
            share_targets: opts.share_targets,
            closed: AtomicBool::new(false),
            path: dir.to_path_buf(),
        });
        md.recover()?;
        Ok(md)
    }

    /// Finishes the Commits a kill interrupted: one whose committed snapshot the backend
    /// has is recorded; one whose backend step never ran is dropped (its active snapshot
    /// stays).
    fn recover(&self) -> Result<()> {
        for intent in self.read(|tx| tx.all_pending())? {
            let c = &intent.committed;
            if intent.active.is_empty() {
                // A create's reservation: its backend snapshot, if made, has no record and
                // goes with the next collection.
                self.write(|tx| tx.unreserve(&c.ns, &c.key))?;
                continue;
            }
            let made = match self.backend.stat(&c.bkey) {
                Ok(_) => true,
                Err(e) if e.is(ErrorKind::NotFound) => false,
                Err(e) => return Err(e),
            };
            log::info!(
                "namespace metadata: {} the interrupted commit of {:?} in {:?}",
                if made { "finishing" } else { "dropping" },
                c.key,
                c.ns
            );
            self.write(|tx| {
                if made {
                    apply_commit(tx, &intent)
                } else {
                    drop_commit(tx, &intent)
                }
            })?;
        }
        Ok(())
    }

    /// The view of namespace `ns`: a [`Snapshotter`] whose keys are that namespace's.
    ///
    /// # Errors
    /// As [`validate_namespace`].
    pub fn namespace(self: &Arc<Self>, ns: &str) -> Result<Namespaced> {
        validate_namespace(ns)?;
        Ok(Namespaced {
            md: Arc::clone(self),
            ns: ns.to_string(),
        })
    }

    /// The backend the layer sits in front of.
    pub fn backend(&self) -> &Arc<dyn Snapshotter> {
        &self.backend
    }

    /// Closes the backend; every later call fails with Unavailable.
    ///
    /// # Errors
    /// What the backend's close returns.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        self.backend.close()
    }

    pub(crate) fn pins(&self) -> MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `bkey`; None when a collection is removing it.
    pub(crate) fn pin(&self, bkey: &str) -> Option<Pin<'_>> {
        let mut p = self.pins();
        if p.removing.contains(bkey) {
            return None;
        }
        *p.pinned.entry(bkey.to_string()).or_default() += 1;
        if p.sweeping {
            p.touched.insert(bkey.to_string());
        }
        Some(Pin {
            md: self,
            bkey: bkey.to_string(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::unavailable(format!(
                "namespace metadata at {} is closed: open it again",
                self.path.display()
            )));
        }
        Ok(())
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&ReadTxn<'_>) -> Result<T>) -> Result<T> {
        self.check_open()?;
        let txn = ReadTxn {
            txn: self.db.env.read_txn().lmdb()?,
            dbs: self.db.dbs,
        };
        f(&txn)
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>) -> Result<T> {
        self.check_open()?;
        let mut txn = WriteTxn {
            txn: self.db.env.write_txn().lmdb()?,
            dbs: self.db.dbs,
        };
        let v = f(&mut txn)?;
        txn.txn.commit().lmdb()?;
        Ok(v)
    }
}

/// One namespace of a [`Metadata`] layer: a [`Snapshotter`] whose keys are namespace-local.
/// The backend sees keys `<namespace>/<sequence>/<key>` no client chooses.
pub struct Namespaced {
    md: Arc<Metadata>,
    ns: String,
}

impl std::fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaced").field("ns", &self.ns).finish()
    }
}

fn missing(ns: &str, key: &str) -> Error {
    Error::not_found(format!(
        "snapshot {:?} does not exist in namespace {ns:?}",
        truncate_for_message(key)
    ))
}

/// Backend info seen through a record: the record's name, parent and times, the backend's
/// kind, the backend's labels with the record's written over them.
fn merged(backend: Info, rec: &Record) -> Info {
    let mut labels = backend.labels;
    labels.extend(rec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Info {
        kind: backend.kind,
        name: rec.key.clone(),
        parent: rec.parent.clone(),
        labels,
        created: rec.created,
        updated: rec.updated,
    }
}

impl Namespaced {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The layer this namespace belongs to.
    pub fn metadata(&self) -> &Arc<Metadata> {
        &self.md
    }

    fn record(&self, key: &str) -> Result<Record> {
        self.md
            .read(|tx| tx.record(&self.ns, key))?
            .ok_or_else(|| missing(&self.ns, key))
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> Result<Vec<Mount>> {
        validate_key("key", key)?;
        if !parent.is_empty() {
            validate_key("parent", parent)?;
        }
        validate_labels(&opts.labels)?;
        let ns = self.ns.as_str();
        let target = opts
            .labels
            .get(TARGET_LABEL)
            .filter(|t| !t.is_empty())
            .cloned();
        // The checks in containerd's order, and the sequence, before the backend is asked.
        let (bkey, bparent, known) = self.md.write(|tx| {
            if let Some(t) = &target {
                if tx.record(ns, t)?.is_some() {
                    return Err(Error::already_exists(format!(
                        "target snapshot {:?} exists in namespace {ns:?}",
                        truncate_for_message(t)
                    )));
                }
            }
            if tx.record(ns, key)?.is_some() || tx.pending(ns, key)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {:?} exists in namespace {ns:?}",
                    truncate_for_message(key)
                )));
            }
            let bparent = if parent.is_empty() {
                String::new()
            } else {
                tx.record(ns, parent)?
                    .ok_or_else(|| parent_missing(ns, parent))?
                    .bkey
            };
            let known = match &target {
                Some(t) => tx.target(t, &bparent)?,
                None => None,
            };
            let seq = tx.next_seq(ns)?;
            let bkey = format!("{ns}/{seq}/{key}");
            // The key is taken until the record commits: a Commit of the same name, or
            // another create of the key, is AlreadyExists meanwhile.
            tx.reserve(ns, key, &bkey)?;
            Ok((bkey, bparent, known))
        })?;
        let _reserved = Reservation {
            md: &self.md,
            ns,
            key,
        };
        let pin = self
            .md
            .pin(&bkey)
            .expect("a fresh backend key is never being removed");
        let bopts = CreateOptions::with_labels(inherited_labels(&opts.labels));
        // A target committed on this backend (in any namespace): shared, not made again.
        let mut shared = match (&target, known) {
            (Some(t), Some(candidate)) if self.md.share_targets => {
                self.check_target(t, &bparent, &candidate)?
            }
            _ => None,
        };
        let made = match (&shared, kind) {
            (Some(_), _) => Err(Error::already_exists("a committed target exists")),
            (None, Kind::View) => self.md.backend.view(&bkey, &bparent, &bopts),
            (None, _) => self.md.backend.prepare(&bkey, &bparent, &bopts),
        };
        let now = SystemTime::now();
        let mut rec = Record {
            ns: ns.to_string(),
            key: key.to_string(),
            bkey: bkey.clone(),
            parent: parent.to_string(),
            created: now,
            updated: now,
            labels: stored_labels(&opts.labels),
        };
        let (mounts, created, outcome, _target_pin) = match made {
            Ok(m) => (m, Some(bkey), Ok(()), None),
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                let Some(t) = &target else {
                    return Err(Error::unknown(format!(
                        "unexpected error from the backend for {:?}: {e}",
                        truncate_for_message(key)
                    )));
                };
                let (found, tpin) = match shared.take() {
                    Some(found) => found,
                    None => self.find_target(t, &bparent)?,
                };
                rec.key = t.clone();
                rec.bkey = found.name;
                rec.created = found.created;
                rec.updated = found.updated;
                for (k, v) in found.labels {
                    rec.labels.entry(k).or_insert(v);
                }
                let done = Err(Error::already_exists(format!(
                    "target snapshot {:?} from the backend: recorded in namespace {ns:?}",
                    truncate_for_message(t)
                )));
                (Vec::new(), None, done, Some(tpin))
            }
            Err(e) => return Err(e),
        };
        let recorded = self.md.write(|tx| {
            tx.unreserve(ns, key)?;
            if tx.record(ns, &rec.key)?.is_some() || tx.pending(ns, &rec.key)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {:?} exists in namespace {ns:?}",
                    truncate_for_message(&rec.key)
                )));
            }
            if !parent.is_empty() {
                let p = tx
                    .record(ns, parent)?
                    .ok_or_else(|| parent_missing(ns, parent))?;
                if p.bkey != bparent {
                    return Err(Error::invalid_argument(format!(
                        "parent {:?} of {:?} is another snapshot than when the call began",
                        truncate_for_message(parent),
                        truncate_for_message(&rec.key)
                    )));
                }
                tx.link(ns, parent, &rec.key)?;
            }
            self.md.rescue(&rec);
            tx.put(&rec)
        });
        drop(pin);
        if let Err(e) = recorded.and(outcome) {
            if let Some(b) = created {
                if let Err(re) = self.md.backend.remove(&b) {
                    log::warn!("removing backend snapshot {b:?} after a failed create: {re} (the next collection retries)");
                }
            }
            return Err(e);
        }
        self.md.events.changed(false);
        Ok(mounts)
    }

    /// The backend snapshot `candidate` (pinned) if it is committed, labelled with target
    /// `t` and on `bparent`; None if it is not (any more).
    fn check_target(
        &self,
        t: &str,
        bparent: &str,
        candidate: &str,
    ) -> Result<Option<(Info, Pin<'_>)>> {
        let Some(pin) = self.md.pin(candidate) else {
            return Ok(None);
        };
        match self.md.backend.stat(candidate) {
            Ok(i) if is_target(&i, t, bparent) => Ok(Some((i, pin))),
            Ok(_) => Ok(None),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The committed backend snapshot labelled with target `t` on `bparent`, pinned.
    fn find_target(&self, t: &str, bparent: &str) -> Result<(Info, Pin<'_>)> {
        let filter = format!("labels.\"{TARGET_LABEL}\"=={t},parent=={bparent:?}");
        let mut found = None;
        self.md.backend.walk(&[filter], &mut |i: &Info| {
            if is_target(i, t, bparent) && found.is_none() {
                found = Some(i.clone());
            }
            Ok(())
        })?;
        let not_found = || {
            Error::not_found(format!(
                "target snapshot {:?} in the backend",
                truncate_for_message(t)
            ))
        };
        let info = found.ok_or_else(not_found)?;
        let pin = self.md.pin(&info.name).ok_or_else(not_found)?;
        Ok((info, pin))
    }
}

/// Whether `i` is a committed snapshot labelled with target `t` on backend parent `bparent`
/// (checked again here: a backend may ignore a Walk's filters).
fn is_target(i: &Info, t: &str, bparent: &str) -> bool {
    i.kind == Kind::Committed
        && i.labels.get(TARGET_LABEL).map(String::as_str) == Some(t)
        && i.parent == bparent
}

fn being_committed(ns: &str, key: &str) -> Error {
    Error::failed_precondition(format!(
        "snapshot {:?} in namespace {ns:?} is being committed by another call: retry when it returns",
        truncate_for_message(key)
    ))
}

/// Records a Commit whose backend step is done: the committed record replaces the active
/// one, the parent's link moves to it, its target is indexed, the intent goes.
pub(crate) fn apply_commit(tx: &mut WriteTxn<'_>, intent: &Intent) -> Result<()> {
    let c = &intent.committed;
    let ns = c.ns.as_str();
    if let Some(active) = tx.record(ns, &intent.active)? {
        if !active.parent.is_empty() {
            tx.unlink(ns, &active.parent, &intent.active)?;
        }
        tx.delete(ns, &intent.active)?;
    }
    let mut bparent = String::new();
    if !c.parent.is_empty() {
        tx.link(ns, &c.parent, &c.key)?;
        if let Some(p) = tx.record(ns, &c.parent)? {
            bparent = p.bkey;
        }
    }
    tx.put(c)?;
    if let Some(t) = c.labels.get(TARGET_LABEL) {
        tx.put_target(t, &bparent, &c.bkey)?;
    }
    tx.clear_pending(intent)
}

/// Forgets a Commit whose backend step did not happen: its intent and its provisional
/// link from the parent.
pub(crate) fn drop_commit(tx: &mut WriteTxn<'_>, intent: &Intent) -> Result<()> {
    let c = &intent.committed;
    if !c.parent.is_empty() && tx.record(&c.ns, &c.key)?.is_none() {
        tx.unlink(&c.ns, &c.parent, &c.key)?;
    }
    tx.clear_pending(intent)
}

/// A create's hold on its key, let go when dropped (the record's transaction lets it go
/// itself when it commits).
struct Reservation<'a> {
    md: &'a Metadata,
    ns: &'a str,
    key: &'a str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let done = self.md.write(|tx| match tx.pending(self.ns, self.key)? {
            Some(i) if i.active.is_empty() => tx.unreserve(self.ns, self.key),
            _ => Ok(()),
        });
        if let Err(e) = done {
            log::warn!(
                "namespace metadata: releasing {:?} in {:?}: {e} (released at the next open)",
                self.key,
                self.ns
            );
        }
    }
}

fn parent_missing(ns: &str, parent: &str) -> Error {
    Error::not_found(format!(
        "parent snapshot {:?} does not exist in namespace {ns:?}",
        truncate_for_message(parent)
    ))
}

impl Snapshotter for Namespaced {
    fn stat(&self, key: &str) -> Result<Info> {
        let rec = self.record(key)?;
        Ok(merged(self.md.backend.stat(&rec.bkey)?, &rec))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        if info.name.is_empty() {
            return Err(Error::invalid_argument(
                "update: the snapshot's name is empty: name the snapshot to update",
            ));
        }
        let ns = self.ns.as_str();
        self.md.write(|tx| {
            let mut rec = tx
                .record(ns, &info.name)?
                .ok_or_else(|| missing(ns, &info.name))?;
            if fieldpaths.is_empty() {
                rec.labels = info.labels.clone();
            }
            for path in fieldpaths {
                if path == "labels" {
                    rec.labels = info.labels.clone();
                } else if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) if !v.is_empty() => {
                            rec.labels.insert(k.to_string(), v.clone());
                        }
                        _ => {
                            rec.labels.remove(k);
                        }
                    }
                } else {
                    return Err(Error::invalid_argument(format!(
                        "cannot update {path:?} field on snapshot {:?}: only labels can change",
                        truncate_for_message(&info.name)
                    )));
                }
            }
            rec.labels.retain(|_, v| !v.is_empty());
            validate_labels(&rec.labels)?;
            rec.updated = SystemTime::now();
            let mut binfo = Info::new(info.kind, rec.bkey.clone());
            binfo.labels = inherited_labels(&rec.labels);
            let updated = self.md.backend.update(&binfo, fieldpaths)?;
            self.md.rescue(&rec);
            tx.put(&rec)?;
            Ok(merged(updated, &rec))
        })
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.md.backend.usage(&self.record(key)?.bkey)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.md.backend.mounts(&self.record(key)?.bkey)
    }

    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, opts)
    }

    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, opts)
    }

    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        validate_key("name", name)?;
        validate_key("key", key)?;
        validate_labels(&opts.labels)?;
        let ns = self.ns.as_str();
        // The checks, the sequence and the intent, durable before the backend is asked: a
        // kill after the backend's commit is finished at the next open (see `recover`).
        let (intent, active_bkey, bopts) = self.md.write(|tx| {
            if tx.record(ns, name)?.is_some() || tx.pending(ns, name)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {:?} exists in namespace {ns:?}",
                    truncate_for_message(name)
                )));
            }
            let active = tx.record(ns, key)?.ok_or_else(|| missing(ns, key))?;
            if tx.pending(ns, key)?.is_some() {
                return Err(being_committed(ns, key));
            }
            let parent = if opts.parent.is_empty() {
                active.parent.clone()
            } else {
                opts.parent.clone()
            };
            let mut bopts = CommitOptions {
                labels: inherited_labels(&opts.labels),
                parent: String::new(),
            };
            if !parent.is_empty() {
                let p = tx
                    .record(ns, &parent)?
                    .ok_or_else(|| parent_missing(ns, &parent))?;
                if parent != active.parent {
                    bopts.parent = p.bkey;
                }
            }
            let seq = tx.next_seq(ns)?;
            let now = SystemTime::now();
            let intent = Intent {
                active: key.to_string(),
                committed: Record {
                    ns: ns.to_string(),
                    key: name.to_string(),
                    bkey: format!("{ns}/{seq}/{name}"),
                    parent,
                    created: now,
                    updated: now,
                    labels: stored_labels(&opts.labels),
                },
            };
            tx.put_pending(&intent)?;
            // Until the commit is recorded: the new parent cannot be removed, and what the
            // active and the committed snapshot keep alive is spared by a collection.
            if !intent.committed.parent.is_empty() {
                tx.link(ns, &intent.committed.parent, name)?;
            }
            self.md.rescue(&active);
            self.md.rescue(&intent.committed);
            Ok((intent, active.bkey, bopts))
        })?;
        // Pinned from before the backend makes it until its record commits.
        let _pin = self
            .md
            .pin(&intent.committed.bkey)
            .expect("a fresh backend key");
        let done = self
            .md
            .backend
            .commit(&intent.committed.bkey, &active_bkey, &bopts);
        self.md.write(|tx| match &done {
            Ok(()) => {
                self.md.rescue(&intent.committed);
                apply_commit(tx, &intent)
            }
            // Nothing changed in the backend: the active snapshot stays.
            Err(_) => drop_commit(tx, &intent),
        })?;
        done?;
        self.md.events.changed(false);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let ns = self.ns.as_str();
        self.md.write(|tx| {
            let rec = tx.record(ns, key)?.ok_or_else(|| missing(ns, key))?;
            if tx.pending(ns, key)?.is_some() {
                return Err(being_committed(ns, key));
            }
            if tx.has_children(ns, key)? {
                return Err(Error::failed_precondition(format!(
                    "cannot remove snapshot {:?}: it has children in namespace {ns:?}; remove them first",
                    truncate_for_message(key)
                )));
            }
            if !rec.parent.is_empty() {
                tx.unlink(ns, &rec.parent, key)?;
            }
            tx.delete(ns, key)
        })?;
        // The backend's snapshot goes with the next collection.
        self.md.dirty.store(true, Ordering::SeqCst);
        self.md.events.changed(true);
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let filters = FilterSet::parse(filters)?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self
                .md
                .read(|tx| tx.batch(Some(&self.ns), after.as_deref(), WALK_BATCH))?;
            let Some((last, _)) = batch.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (_, rec) in &batch {
                let info = match self.md.backend.stat(&rec.bkey) {
                    Ok(b) => merged(b, rec),
                    Err(e) if e.is(ErrorKind::NotFound) => continue,
                    Err(e) => return Err(e),
                };
                if filters.matches(&info) {
                    f(&info)?;
                }
            }
        }
    }

    fn close(&self) -> Result<()> {
        self.md.close()
    }

    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(self)
    }
}

impl Cleaner for Namespaced {
    /// A garbage collection over every namespace ([`Metadata::collect`]).
    fn cleanup(&self) -> Result<()> {
        self.md.collect().map(drop)
    }

    /// The backend's audit (the metadata layer's own records are the collector's).
    fn fsck(&self, repair: bool) -> Result<snapshot_core::fsck::FsckReport> {
        match self.md.backend().as_cleaner() {
            Some(c) => c.fsck(repair),
            None => Err(snapshot_core::Error::not_implemented(
                "fsck: the backend under the metadata layer cannot audit itself",
            )),
        }
    }
}
