//! The snapshot lifecycle every backend shares: [`SnapshotStore`] runs create, commit and
//! remove in the crash-safe order of DESIGN.md section 5, sweeps what a crash left and
//! purges removed trees. A backend supplies only a [`Storage`]: how a snapshot's tree is
//! made, measured, frozen and deleted, and what its mounts are.
//!
//! ```text
//! <root>/lock                the root's lock (one process per root)
//! <root>/backend             the name of the backend whose store this is
//! <root>/metadata/           the LMDB metastore
//! <root>/<dir>/<id>          a snapshot's tree, <dir> as Storage::kind_dir names it
//! <root>/<dir>/new-*         a tree being built (staging)
//! <root>/<dir>/rm-*          a removed tree (or an orphan) waiting for deletion
//! ```
//!
//! The order of operations:
//! - **create**: the checks run in a read transaction; the tree is built under a staging
//!   name outside any transaction (a copy can take long); then in one write transaction the
//!   snapshot is recorded and its tree renamed to `<id>` (never replacing anything) and made
//!   durable (a directory fsync) before the commit. An error anywhere deletes the tree.
//! - **commit**: the usage is measured (after a `syncfs` with [`Options::sync`]) outside
//!   the write transaction; a backend whose committed trees live apart from active ones
//!   ([`Storage::freeze`]) builds the committed tree under a staging name first. The write
//!   transaction records the commit (and publishes the frozen tree); the active tree is
//!   deleted after.
//! - **remove**: in one write transaction the record goes and `<id>` is renamed to
//!   `rm-<id>`; a failed transaction renames it back. The tree is deleted after the commit
//!   or left to [`Cleaner::cleanup`] (asynchronous remove).
//! - **open and cleanup**: the sweep runs in a write transaction, so no create sits
//!   between its publish and its commit: an `rm-<id>` whose record is live is renamed back;
//!   a `<id>` without a record (or with a record that lives in another directory) and a
//!   staging tree nobody builds are retired. Purging deletes every `rm-*` outside it.
//!
//! # Blank trees
//!
//! A durable store ([`Options::no_sync`] off) builds, in a background thread, a batch of
//! the trees most creates need (what [`Storage::fill`] builds for an active snapshot
//! without a parent) under ids whose counter is persisted past the batch first, each made
//! durable before any create may take it. An active create the backend allows
//! ([`Storage::blank_serves`]) takes the oldest, adapts it to its parent
//! ([`Storage::adapt_blank`], durable before it returns) and records it under its id: no
//! rename and no directory fsync on the caller's path. A refill starts when fewer than half
//! a batch are left. The sweep leaves the pool's trees alone; a crash leaves them as
//! orphans, which the next open retires, and their ids are never handed out again. Close
//! deletes the trees no create took and waits until nothing the pool made is still being
//! recorded or deleted.
//!
//! A call that finds, after its slow step, that another call changed what it worked on
//! (a parent removed during the copy, an active snapshot removed during its measure) ends
//! as if the two calls had run one after the other: with the error the later call gets
//! (NotFound, AlreadyExists), or it starts over; never with Unknown.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::blank::{Blanks, BATCH};

use crate::error::{Error, ErrorKind, Result};
use crate::fsck::{Finding, FindingKind, FsckReport, Pending};
use crate::keyspace::truncate_for_message;
use crate::layout::{fsync_dir, remove_tree, rename_noreplace, sync_filesystem, RootLock};
use crate::metastore::{MetaStore, Reader, Snapshot, StoreOptions, WriteTxn};
use crate::quota::{parse_size, refuse_limit, ProjectQuotas, MAX_SIZE_LABEL};
use crate::types::{CommitOptions, CreateOptions, Info, Kind, Labels, Mount, Usage};
use crate::{Cleaner, Snapshotter};

const STAGING_PREFIX: &str = "new-";

/// Numbers staging and retired names, process-wide: a store closed and opened again in
/// one process never reuses a name a call of the closed one may still hold.
static NAMES: AtomicU64 = AtomicU64::new(0);
const RETIRED_PREFIX: &str = "rm-";

/// How often a create or commit starts over when another call changed the snapshot it
/// works on between its slow step and its transaction.
const ATTEMPTS: usize = 3;

/// The options every backend takes, passed whole from the daemon or the facade so that no
/// backend misses one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Skip the fsyncs that make each operation durable (the metastore's commit and the
    /// publishing directory's), as containerd's `no_sync`: faster, but a power loss can
    /// lose the latest operations. A crash of the process loses nothing either way.
    pub no_sync: bool,
    /// Flush the filesystem holding an active snapshot (`syncfs`) before its commit is
    /// recorded, so a committed layer's files survive a power loss too (containerd's diff
    /// `sync_fs`). Off by default, as in containerd.
    pub sync: bool,
    /// Whether Remove leaves the removed tree to [`Cleaner::cleanup`] (true) or deletes it
    /// before it returns (false). `None` takes the backend's default
    /// ([`Storage::ASYNC_REMOVE`]: on for overlay, as containerd's overlayfs plugin, off for
    /// native and btrfs).
    pub async_remove: Option<bool>,
    /// The initial size of the metastore's memory map in bytes (it grows as needed).
    pub map_size: usize,
    /// Open without sweeping or deleting what a crash left, so that
    /// [`fsck`](SnapshotStore::fsck) reports it (as `snapshotctl fsck --root` opens a
    /// stopped daemon's root). Off by default: an open repairs.
    pub keep_leftovers: bool,
    /// The limit in bytes of every active snapshot's layer that has no
    /// [`MAX_SIZE_LABEL`](crate::quota::MAX_SIZE_LABEL) of its own (the daemon's
    /// `--max-size`). It applies from the next open to active snapshots made before it
    /// was set or changed too. Opening fails where no limit can be enforced.
    pub max_size: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            no_sync: false,
            sync: false,
            async_remove: None,
            map_size: StoreOptions::default().map_size,
            keep_leftovers: false,
            max_size: None,
        }
    }
}

/// What a backend does to its trees; [`SnapshotStore`] does the rest.
///
/// Every path handed to a hook is absolute and lies under the root.
pub trait Storage: Send + Sync + 'static {
    /// The backend's name, as errors and logs quote it (`native`, `overlay`, `btrfs`).
    const NAME: &'static str;
    /// Remove's default ([`Options::async_remove`] `None`).
    const ASYNC_REMOVE: bool = false;
    /// Whether [`mounts`](Self::mounts) is computed from the record alone: it never fails
    /// and touches no file (default: no). The store's Mounts then never waits for a
    /// writer ([`Snapshotter::mounts_never_block`]).
    const PURE_MOUNTS: bool = false;

    /// The directory under the root that holds the trees of `kind` (default:
    /// `snapshots` for every kind).
    fn kind_dir(&self, kind: Kind) -> &'static str {
        let _ = kind;
        "snapshots"
    }

    /// Whether a snapshot of `kind` (on a parent or not) has a tree of its own (default:
    /// always). A native view of a parent has none: it mounts the parent's.
    fn has_tree(&self, kind: Kind, has_parent: bool) -> bool {
        let _ = (kind, has_parent);
        true
    }

    /// Refuses a create the backend cannot serve, before anything is built: `labels` are
    /// the create's (default: every create is served). Overlay checks the ID-mapping
    /// labels ([`crate::idmap`]) here.
    ///
    /// # Errors
    /// InvalidArgument for labels the backend cannot read, FailedPrecondition for what it
    /// cannot do on this machine.
    fn check_create(&self, kind: Kind, labels: &Labels) -> Result<()> {
        let _ = (kind, labels);
        Ok(())
    }

    /// Refuses an Update of the snapshot `info` (of `kind`) that would change labels the
    /// backend fixed at create: `old` are its labels before, `new` after (default: every
    /// update is served). Overlay refuses changes to the ID-mapping labels of active
    /// snapshots and views, which its layer's owner and mounts follow.
    ///
    /// # Errors
    /// FailedPrecondition naming the label.
    fn check_update(&self, info: &Info, kind: Kind, old: &Labels, new: &Labels) -> Result<()> {
        let _ = (info, kind, old, new);
        Ok(())
    }

    /// Builds the tree of a new active or view snapshot at `dst`, which does not exist
    /// yet; `parent` is the committed parent's tree and `labels` the create's (empty for a
    /// blank tree made ahead). On an error, whatever exists at `dst` is deleted with
    /// [`delete`](Self::delete).
    ///
    /// # Errors
    /// Whatever fails; when the parent was removed meanwhile, the caller reports that
    /// instead.
    fn fill(&self, dst: &Path, kind: Kind, parent: Option<&Path>, labels: &Labels) -> Result<()>;

    /// Whether a blank tree (what [`fill`](Self::fill) builds for an active snapshot
    /// without a parent), made ahead and adapted with [`adapt_blank`](Self::adapt_blank),
    /// can be the tree of a new active snapshot (on a parent or not). Default: only
    /// without a parent. See [Blank trees](crate::lifecycle#blank-trees).
    fn blank_serves(&self, has_parent: bool) -> bool {
        !has_parent
    }

    /// Turns `tree`, a durable blank tree, into the tree of a new active snapshot on
    /// `parent` (if any; a parent only where [`blank_serves`](Self::blank_serves) allows
    /// one) with the create's `labels`, and makes what it changed durable (an fsync of
    /// each inode it changed: an fsync of `tree` does not carry an owner change of a
    /// directory below it) before it returns: the record commits next. Default: nothing
    /// to do.
    ///
    /// # Errors
    /// Whatever fails; when the parent was removed meanwhile, the caller reports that
    /// instead.
    fn adapt_blank(&self, tree: &Path, parent: Option<&Path>, labels: &Labels) -> Result<()> {
        let _ = (tree, parent, labels);
        Ok(())
    }

    /// The directories of an active snapshot's `tree` that a layer limit covers, its layer
    /// first, then the directories its writes pass through (overlay: `fs` and `work`,
    /// where copy-ups are made before they are renamed into the layer: a rename across
    /// projects fails). Each gets the layer's project ([`crate::quota`]) while it is
    /// empty. Default: none, the backend cannot cap a layer and refuses
    /// [`MAX_SIZE_LABEL`](crate::quota::MAX_SIZE_LABEL).
    fn quota_dirs(&self, tree: &Path) -> Vec<PathBuf> {
        let _ = tree;
        Vec::new()
    }

    /// The usage of an active snapshot's tree (default: a walk, [`crate::usage::disk_usage`]).
    ///
    /// # Errors
    /// NotFound when the tree is gone.
    fn measure(&self, tree: &Path) -> Result<Usage> {
        crate::usage::disk_usage(tree)
    }

    /// Flushes the filesystem holding an active tree before its commit is recorded, with
    /// [`Options::sync`] (default: `syncfs`, [`sync_filesystem`]).
    ///
    /// # Errors
    /// Unknown when the flush fails.
    fn flush(&self, tree: &Path) -> Result<()> {
        sync_filesystem(tree)
    }

    /// Builds at `dst` (which does not exist) the committed tree of the active tree
    /// `active`. Called only when committed trees live in another directory than active
    /// ones ([`kind_dir`](Self::kind_dir)); otherwise a commit keeps the tree in place.
    ///
    /// # Errors
    /// Whatever fails.
    fn freeze(&self, active: &Path, dst: &Path) -> Result<()> {
        let _ = dst;
        Err(Error::not_implemented(format!(
            "backend {} keeps committed trees apart but cannot freeze {}",
            Self::NAME,
            active.display()
        )))
    }

    /// Deletes a tree (a removed snapshot, an orphan, a failed staging tree); a missing one
    /// is fine (default: [`remove_tree`]).
    ///
    /// # Errors
    /// Whatever fails.
    fn delete(&self, tree: &Path) -> Result<()> {
        remove_tree(tree).map_err(|e| Error::io("delete", tree, e))
    }

    /// Makes the rename that published `tree` durable, before the metastore records it
    /// (default: fsync of `tree` itself, which also makes the entries inside it durable and,
    /// the directory being new, its name in its parent directory).
    ///
    /// # Errors
    /// Unknown when the fsync fails.
    fn sync_published(&self, tree: &Path) -> Result<()> {
        fsync_dir(tree)
    }

    /// The mounts of an active or view snapshot whose tree is (or, for a snapshot without
    /// a tree of its own, would be) `tree`. `labels` are the snapshot's labels when
    /// [`mount_labels`](Self::mount_labels) asks for them (and at create), else `None`.
    ///
    /// # Errors
    /// Whatever fails.
    fn mounts(
        &self,
        snapshot: &Snapshot,
        tree: &Path,
        labels: Option<&Labels>,
    ) -> Result<Vec<Mount>>;

    /// Whether [`mounts`](Self::mounts) of `snapshot` needs its labels (default: no).
    fn mount_labels(&self, snapshot: &Snapshot) -> bool {
        let _ = snapshot;
        false
    }

    /// Whether a commit may give a parentless snapshot a parent (containerd 2.2's rebase):
    /// true only where a layer is a diff (overlay). Default: no, the commit is refused
    /// with NotImplemented.
    fn can_rebase(&self) -> bool {
        false
    }

    /// A label the backend adds to every Info it returns and never stores (overlay's
    /// upperdir label), with its value in [`label_value`](Self::label_value). Default:
    /// none.
    fn synthesized_label(&self) -> Option<&'static str> {
        None
    }

    /// The value of [`synthesized_label`](Self::synthesized_label) for the snapshot with
    /// internal id `id`.
    fn label_value(&self, id: u64) -> String {
        let _ = id;
        String::new()
    }
}

/// A staging tree owned by a running create or commit; dropping it deletes the tree
/// unless it was published.
struct Staged<'a, S: Storage> {
    owner: &'a SnapshotStore<S>,
    path: PathBuf,
    published: bool,
}

impl<S: Storage> Drop for Staged<'_, S> {
    fn drop(&mut self) {
        if !self.published {
            self.owner.discard(&self.path);
        }
        self.owner
            .staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
    }
}

/// A blank tree a create took from the pool; dropping it deletes the tree unless its
/// record committed, and lets its id go.
struct BlankTree<'a, S: Storage> {
    owner: &'a SnapshotStore<S>,
    pool: &'a Blanks,
    id: u64,
    path: PathBuf,
    recorded: bool,
}

impl<S: Storage> Drop for BlankTree<'_, S> {
    fn drop(&mut self) {
        if !self.recorded {
            self.owner.discard(&self.path);
        }
        self.pool.release(self.id);
    }
}

/// A snapshotter made of a [`Storage`] and the shared lifecycle: it implements
/// [`Snapshotter`] and [`Cleaner`] for every backend.
pub struct SnapshotStore<S: Storage> {
    storage: Arc<S>,
    root: PathBuf,
    store: Arc<MetaStore>,
    // Durable blank active trees made ahead (durable stores only).
    blanks: Option<Arc<Blanks>>,
    async_remove: bool,
    sync: bool,
    durable: bool,
    // The root filesystem's project quotas, where the backend can cap layers with them.
    quotas: Option<Arc<ProjectQuotas>>,
    max_size: Option<u64>,
    // Staging paths of running creates and commits: the sweep leaves them alone.
    staging: Mutex<HashSet<PathBuf>>,
    // Removes hold the read side from their retire until the commit (or the restore);
    // purge lists retired trees under the write side, so it never deletes an `rm-<id>`
    // that a failed remove is about to rename back.
    removing: RwLock<()>,
    lock: Mutex<Option<RootLock>>,
}

impl<S: Storage> std::fmt::Debug for SnapshotStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("backend", &S::NAME)
            .field("root", &self.root)
            .field("async_remove", &self.async_remove)
            .field("sync", &self.sync)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// Makes `root` absolute (against the current directory), checks that it is UTF-8 (mount
/// sources and options are strings) and creates it (mode 0700) if needed. Backends call
/// it before they build their [`Storage`], which names paths under the root.
///
/// # Errors
/// InvalidArgument naming the root when it is not UTF-8; Unknown when it cannot be made.
pub fn prepare_root(root: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(root).map_err(|e| Error::io("resolve root", root, e))?;
    if abs.to_str().is_none() {
        return Err(Error::invalid_argument(format!(
            "snapshotter root {} is not valid UTF-8: pick a root whose path is",
            abs.display()
        )));
    }
    create_private_dir(&abs)?;
    Ok(abs)
}

/// The file under the root that names the backend whose store it holds.
const BACKEND_FILE: &str = "backend";

/// The backend whose store `root` holds (as its `backend` file names it), or `None` for a
/// root without a store, or one made before roots recorded their backend.
///
/// # Errors
/// Unknown when the file exists but cannot be read.
pub fn recorded_backend(root: &Path) -> Result<Option<String>> {
    let path = root.join(BACKEND_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

/// Refuses a root another backend's store is in, and records `name` in a root that names
/// none yet.
fn claim_root(root: &Path, name: &str) -> Result<()> {
    match recorded_backend(root)? {
        Some(found) if found == name => Ok(()),
        Some(found) => Err(Error::failed_precondition(format!(
            "snapshotter root {} holds a store of the {found} backend, not {name}: open it \
             with {found}, or pick another root for {name}",
            root.display()
        ))),
        None => {
            let path = root.join(BACKEND_FILE);
            let tmp = root.join(format!(".{BACKEND_FILE}.tmp"));
            // Written, flushed, then renamed: a power cut leaves the whole name or none.
            (|| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(format!("{name}\n").as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            })()
            .map_err(|e| Error::io("write", &path, e))?;
            // Once per root, so even with no_sync: an empty or lost name would let another
            // backend claim the root after a power cut.
            fsync_dir(root)
        }
    }
}

impl<S: Storage> SnapshotStore<S> {
    /// Opens (or creates) the store at `root` for `storage`: takes the root's lock, checks
    /// that the root is this backend's (its `backend` file; a root without one is claimed),
    /// creates
    /// the kind directories (mode 0700), opens the metastore at `<root>/metadata`, sweeps
    /// what a crash left and, with synchronous remove, deletes it. A leftover that cannot
    /// be deleted (an immutable file, a busy mount) is logged and kept for the next cleanup.
    ///
    /// # Errors
    /// InvalidArgument for a root that is not UTF-8; Unavailable when another snapshotter
    /// (in this process or another) holds the root, naming the holder; FailedPrecondition
    /// when another backend's store is in the root; Unknown when the
    /// directories or the metastore cannot be made, or the sweep cannot rename.
    pub fn open(root: &Path, storage: S, options: &Options) -> Result<SnapshotStore<S>> {
        let root = prepare_root(root)?;
        let lock = RootLock::acquire(&root)?;
        claim_root(&root, S::NAME)?;
        let sn = SnapshotStore {
            async_remove: options.async_remove.unwrap_or(S::ASYNC_REMOVE),
            sync: options.sync,
            durable: !options.no_sync,
            store: Arc::new(MetaStore::open(
                &root.join("metadata"),
                &StoreOptions {
                    no_sync: options.no_sync,
                    map_size: options.map_size,
                },
            )?),
            blanks: (!options.no_sync).then(Arc::default),
            quotas: match storage.quota_dirs(&root).is_empty() {
                true => None,
                false => ProjectQuotas::probe(&root)?.map(Arc::new),
            },
            max_size: options.max_size,
            storage: Arc::new(storage),
            root,
            staging: Mutex::default(),
            removing: RwLock::new(()),
            lock: Mutex::new(Some(lock)),
        };
        for d in sn.dirs() {
            create_private_dir(&d)?;
        }
        if let Some(max) = sn.max_size {
            sn.can_limit(&format!(
                "a default layer limit of {max} bytes (--max-size)"
            ))?;
        }
        if options.keep_leftovers {
            return Ok(sn);
        }
        sn.sweep()?;
        sn.apply_limits()?;
        if !sn.async_remove {
            if let Err(e) = sn.purge() {
                log::warn!(
                    "{} snapshotter {}: deleting leftovers (cleanup retries): {e}",
                    S::NAME,
                    sn.root.display()
                );
            }
        }
        Ok(sn)
    }

    /// The root (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The backend's storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The metastore.
    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    /// Whether Remove leaves trees to cleanup.
    pub fn async_remove(&self) -> bool {
        self.async_remove
    }

    /// The ids of the blank trees made ahead that no create has taken yet, lowest first
    /// (after waiting for a refill that is running). Empty for a store opened with
    /// [`Options::no_sync`], which makes none.
    pub fn blank_trees(&self) -> Vec<u64> {
        self.blanks.as_ref().map(|b| b.ready()).unwrap_or_default()
    }

    /// `<root>/<kind dir>/<id>`, the tree of a snapshot of `kind`.
    pub fn tree(&self, kind: Kind, id: u64) -> PathBuf {
        self.root
            .join(self.storage.kind_dir(kind))
            .join(id.to_string())
    }

    /// The project quotas that cap and count the layers, where the root's filesystem has
    /// them and the backend can use them.
    pub fn quotas(&self) -> Option<&ProjectQuotas> {
        self.quotas.as_deref()
    }

    /// The store's snapshot `key`.
    ///
    /// # Errors
    /// NotFound for a missing key.
    pub fn snapshot(&self, key: &str) -> Result<Snapshot> {
        self.store.read(|tx| tx.snapshot(key))
    }

    /// Checks the metastore's invariants (keys, child links, the id counter) and that every
    /// snapshot that has a tree has it. Returns the number of snapshots.
    ///
    /// # Errors
    /// Unknown naming the first inconsistency.
    pub fn check(&self) -> Result<usize> {
        let n = self.store.read(|tx| tx.check())?;
        for (id, key) in self.store.read(|tx| tx.id_map())? {
            let Ok(s) = self.snapshot(&key) else { continue };
            if !self.storage.has_tree(s.kind, !s.parent_ids.is_empty()) {
                continue;
            }
            let tree = self.tree(s.kind, id);
            if std::fs::symlink_metadata(&tree).is_err() {
                return Err(Error::unknown(format!(
                    "snapshot {:?} (id {id}): its tree {} is missing",
                    truncate_for_message(&key),
                    tree.display()
                )));
            }
        }
        Ok(n)
    }

    /// The distinct kind directories.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut names: Vec<&'static str> = [Kind::Active, Kind::View, Kind::Committed]
            .into_iter()
            .map(|k| self.storage.kind_dir(k))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|n| self.root.join(n)).collect()
    }

    /// The limit of a new snapshot's layer: its [`MAX_SIZE_LABEL`], else the store's
    /// [`Options::max_size`] for an active snapshot. A view cannot be written, so its
    /// label is only checked to be a size.
    ///
    /// # Errors
    /// InvalidArgument for a label that is not a size; FailedPrecondition for a limit on
    /// an active snapshot where none can be enforced.
    fn limit_of(&self, kind: Kind, labels: &Labels) -> Result<Option<u64>> {
        let asked = match labels.get(MAX_SIZE_LABEL) {
            Some(v) => Some(parse_size(&format!("label {MAX_SIZE_LABEL}"), v)?),
            None => None,
        };
        if kind != Kind::Active {
            return Ok(None);
        }
        if let (Some(_), Some(v)) = (asked, labels.get(MAX_SIZE_LABEL)) {
            self.can_limit(&format!("label {MAX_SIZE_LABEL}={v}"))?;
        }
        Ok(asked.or(self.max_size))
    }

    /// Refuses a limit (named by `what`) where none can be enforced.
    fn can_limit(&self, what: &str) -> Result<()> {
        if self.storage.quota_dirs(&self.root).is_empty() {
            return Err(Error::failed_precondition(format!(
                "{what}: backend {} cannot cap a layer; use the overlay backend on xfs or \
                 ext4 with project quotas, or leave the limit out",
                S::NAME
            )));
        }
        match self.quotas {
            Some(_) => Ok(()),
            None => Err(refuse_limit(what, &self.root)),
        }
    }

    /// Gives the new layer at `tree` (snapshot `id`) its project and sets its `limit`;
    /// with `durable`, fsyncs the directories it changed. A layer that gets no project
    /// (another user of the filesystem holds it) is refused a limit.
    fn limit_tree(&self, tree: &Path, id: u64, limit: Option<u64>, assign: bool) -> Result<()> {
        let Some(q) = &self.quotas else { return Ok(()) };
        let dirs = self.storage.quota_dirs(tree);
        if assign {
            match q.assign(id, &dirs) {
                Ok(true) => {
                    if self.durable {
                        for d in &dirs {
                            fsync_dir(d)?;
                        }
                    }
                    // An id a power cut handed out twice may find its old limit.
                    if let Some(p) = q.project(id) {
                        q.set_limit(p, limit.unwrap_or(0))?;
                    }
                    return Ok(());
                }
                Ok(false) => {}
                // Served without a project: only a limit is refused.
                Err(e) => log::warn!("{}: {e}: the layer gets no project", S::NAME),
            }
        }
        let Some(limit) = limit else { return Ok(()) };
        match q.project(id).filter(|_| q.owns(id, &dirs[0])) {
            Some(p) => q.set_limit(p, limit),
            None => Err(Error::failed_precondition(format!(
                "label {MAX_SIZE_LABEL}: the layer {} has no project quota of its own (its \
                 project ID is held outside the store, see the log): give the root {} a \
                 project ID of its own range (chattr -p BASE) and restart, or leave the \
                 limit out",
                dirs[0].display(),
                self.root.display()
            ))),
        }
    }

    /// Sets every active snapshot's limit from its label or [`Options::max_size`] (none:
    /// cleared): what a power cut lost of a limit set just before comes back, and a
    /// changed default applies.
    fn apply_limits(&self) -> Result<()> {
        let Some(q) = &self.quotas else { return Ok(()) };
        let actives = self.store.read(|tx| {
            let mut v = Vec::new();
            for (id, key) in tx.id_map()? {
                if tx.kind_of(id)? == Some(Kind::Active) {
                    v.push((id, tx.info(&key)?.labels));
                }
            }
            Ok(v)
        })?;
        for (id, labels) in actives {
            let tree = self.tree(Kind::Active, id);
            let dirs = self.storage.quota_dirs(&tree);
            let limit = labels
                .get(MAX_SIZE_LABEL)
                .and_then(|v| parse_size(MAX_SIZE_LABEL, v).ok())
                .or(self.max_size);
            let Some(p) = q.project(id).filter(|_| q.owns(id, &dirs[0])) else {
                if let Some(l) = limit {
                    log::warn!(
                        "{}: the layer {} (snapshot id {id}) has no project of its own: it is \
                         not capped at {l} bytes (made before limits, or its project was \
                         changed): commit or remove it",
                        S::NAME,
                        dirs[0].display()
                    );
                }
                continue;
            };
            if q.read(p)?.limit != limit.map_or(0, |l| l.div_ceil(512) * 512) {
                q.set_limit(p, limit.unwrap_or(0))?;
            }
        }
        Ok(())
    }

    /// The usage of the active snapshot `id`'s tree: from its project quota when it has
    /// one (one call whatever the layer holds; less what the other quota directories
    /// hold), else measured.
    fn measure_active(&self, id: u64, tree: &Path) -> Result<Usage> {
        if let Some(q) = &self.quotas {
            let dirs = self.storage.quota_dirs(tree);
            let held = q
                .project(id)
                .filter(|_| q.owns(id, &dirs[0]))
                .map(|p| q.read(p))
                .and_then(|r| {
                    r.map_err(|e| log::warn!("{e}: measuring {} by a walk", tree.display()))
                        .ok()
                });
            if let Some(held) = held {
                let mut other = Usage::default();
                for d in &dirs[1..] {
                    match crate::usage::usage_with(d, 1) {
                        Ok(u) => other.add(u),
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(Usage {
                    size: held.bytes.saturating_sub(other.size),
                    inodes: held.inodes.saturating_sub(other.inodes),
                });
            }
        }
        self.storage.measure(tree)
    }

    /// Clears the limit of the layer of snapshot `id` (its tree is `tree`, maybe retired)
    /// when the layer still has the project the store gave it: a container may have
    /// moved its layer to another project, whose limit is not the store's to clear.
    fn release_limit(&self, tree: &Path, id: u64) {
        let Some(q) = &self.quotas else { return };
        let dirs = self.storage.quota_dirs(tree);
        if let Some(p) = q
            .project(id)
            .filter(|_| dirs.first().is_some_and(|d| q.owns(id, d)))
        {
            if let Err(e) = q.set_limit(p, 0) {
                log::warn!("clearing the limit of {}: {e}", tree.display());
            }
        }
    }

    fn separate_commit(&self) -> bool {
        self.storage.kind_dir(Kind::Active) != self.storage.kind_dir(Kind::Committed)
    }

    fn decorate(&self, id: u64, mut info: Info) -> Info {
        if let Some(k) = self.storage.synthesized_label() {
            info.labels
                .insert(k.to_string(), self.storage.label_value(id));
        }
        info
    }

    fn stage(&self, kind: Kind) -> Staged<'_, S> {
        let n = NAMES.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(self.storage.kind_dir(kind))
            .join(format!("{STAGING_PREFIX}{}-{n}", std::process::id()));
        // Registered before anything exists there, so a sweep never takes it for an orphan.
        self.staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone());
        Staged {
            owner: self,
            path,
            published: false,
        }
    }

    fn discard(&self, tree: &Path) {
        // After a failed flush the latest transactions may or may not be on the disk:
        // nothing they may have recorded is deleted; the next open's sweep sorts it out.
        if self.store.flush_failed() || std::fs::symlink_metadata(tree).is_err() {
            return;
        }
        if let Err(e) = self.storage.delete(tree) {
            log::warn!(
                "{}: deleting {} after a failed call (cleanup retries): {e}",
                S::NAME,
                tree.display()
            );
        }
    }

    /// Renames a staging tree to `<kind dir>/<id>` (no replace) and makes it durable. A
    /// leftover `<id>` (an orphan of an id handed out before a crash, which no sweep has
    /// reached yet) is retired first.
    /// Reads the store after every write in flight, a remove between its retire and its
    /// commit included (they run inside write transactions): how a call that failed on a
    /// missing tree learns whether another call took it away. Commits nothing.
    fn settled<T>(&self, f: impl FnOnce(&WriteTxn<'_>) -> Result<T>) -> Result<T> {
        self.store.write(|tx| f(tx))
    }

    fn publish(&self, staged: &mut Staged<'_, S>, kind: Kind, id: u64) -> Result<PathBuf> {
        let dst = self.tree(kind, id);
        match rename_noreplace(&staged.path, &dst) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                log::warn!("retiring orphan {} left by an earlier crash", dst.display());
                self.retire_as(&dst, &format!("orphan-{id}"))
                    .and_then(|()| rename_noreplace(&staged.path, &dst))
            }
            other => other,
        }
        .map_err(|e| Error::io("rename staging tree to", &dst, e))?;
        staged.published = true;
        // Without this a power cut can leave a record whose tree never reached the disk.
        if self.durable {
            if let Err(e) = self.storage.sync_published(&dst) {
                // The transaction aborts: the tree it would have recorded goes too.
                self.discard(&dst);
                return Err(e);
            }
        }
        Ok(dst)
    }

    /// Renames `src` to `rm-<stem>` in its directory, or to a fresh variant of that name
    /// when an older retired tree holds it: a retired tree is never replaced.
    fn retire_as(&self, src: &Path, stem: &str) -> io::Result<()> {
        let dir = src.parent().unwrap_or(&self.root);
        let mut dst = dir.join(format!("{RETIRED_PREFIX}{stem}"));
        loop {
            match rename_noreplace(src, &dst) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let n = NAMES.fetch_add(1, Ordering::Relaxed);
                    dst = dir.join(format!("{RETIRED_PREFIX}{stem}-{}-{n}", std::process::id()));
                }
                r => return r,
            }
        }
    }

    fn retired(&self, kind: Kind, id: u64) -> PathBuf {
        self.root
            .join(self.storage.kind_dir(kind))
            .join(format!("{RETIRED_PREFIX}{id}"))
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> Result<Vec<Mount>> {
        for _ in 0..ATTEMPTS {
            // The checks first, in containerd's order, so nothing is built for a create
            // that must fail.
            let parent_ids = self
                .store
                .read(|tx| tx.check_create(kind, key, parent, &opts.labels))?;
            let limit = self.limit_of(kind, &opts.labels)?;
            self.storage.check_create(kind, &opts.labels)?;
            let parent_id = parent_ids.first().copied();
            let parent_tree = parent_id.map(|p| self.tree(Kind::Committed, p));
            let mut staged = None;
            let mut blank = None;
            if self.storage.has_tree(kind, parent_id.is_some()) {
                let built = match self.take_blank(kind, parent_tree.as_deref(), &opts.labels) {
                    Some(Ok(b)) => {
                        // Its project was given when it was made.
                        let r = self.limit_tree(&b.path, b.id, limit, false);
                        blank = Some(b);
                        r
                    }
                    Some(Err(e)) => Err(e),
                    None => {
                        let st = self.stage(kind);
                        let r =
                            self.storage
                                .fill(&st.path, kind, parent_tree.as_deref(), &opts.labels);
                        staged = Some(st);
                        r
                    }
                };
                if let Err(e) = built {
                    drop(staged.take());
                    // Another call changed the parent during the fill: end as if it
                    // came first.
                    match self.settled(|tx| tx.check_create(kind, key, parent, &opts.labels)) {
                        Err(later) => return Err(later),
                        Ok(ids) if ids.first().copied() != parent_id => continue,
                        Ok(_) => return Err(e),
                    }
                }
            }
            let mut changed = false;
            let mut published = None;
            let res = self.store.write(|tx| {
                let s = match &blank {
                    Some(b) => tx.create_with_id(b.id, kind, key, parent, &opts.labels)?,
                    None => tx.create(kind, key, parent, &opts.labels)?,
                };
                if s.parent_ids.first().copied() != parent_id {
                    // The parent was removed and made again since the fill began.
                    changed = true;
                    return Err(changed_error(key));
                }
                if let Some(st) = staged.as_mut() {
                    if kind == Kind::Active {
                        self.limit_tree(&st.path, s.id, limit, true)?;
                    }
                    self.publish(st, kind, s.id)?;
                    published = Some(s.id);
                }
                // Before the commit, while no other call can reach the snapshot: once it
                // is visible, another client may commit or remove it (and a backend's
                // mounts may read its tree).
                self.storage
                    .mounts(&s, &self.tree(kind, s.id), Some(&opts.labels))
            });
            match res {
                Ok(mounts) => {
                    if let Some(b) = blank.as_mut() {
                        b.recorded = true;
                    }
                    return Ok(mounts);
                }
                Err(e) => {
                    // The transaction did not commit: the published tree goes.
                    if let Some(id) = published {
                        self.discard(&self.tree(kind, id));
                    }
                    if !changed {
                        return Err(e);
                    }
                }
            }
        }
        Err(changed_error(key))
    }

    /// A blank tree for a new snapshot of `kind` on `parent` (adapted to it), when the
    /// pool has one and the backend can use it; starts a refill when the pool runs low.
    fn take_blank(
        &self,
        kind: Kind,
        parent: Option<&Path>,
        labels: &Labels,
    ) -> Option<Result<BlankTree<'_, S>>> {
        let pool = self.blanks.as_deref()?;
        if kind != Kind::Active || !self.storage.blank_serves(parent.is_some()) {
            return None;
        }
        let (id, refill) = pool.take();
        if refill {
            self.refill();
        }
        let id = id?;
        let b = BlankTree {
            owner: self,
            pool,
            id,
            path: self.tree(Kind::Active, id),
            recorded: false,
        };
        Some(
            self.storage
                .adapt_blank(&b.path, parent, labels)
                .map(|()| b),
        )
    }

    /// Makes [`BATCH`] blank trees in a background thread, durable before the pool hands
    /// any of them out. The caller owns the pool's refill (see [`Blanks::take`]).
    fn refill(&self) {
        let Some(pool) = &self.blanks else { return };
        let (storage, store, pool, quotas) = (
            Arc::clone(&self.storage),
            Arc::clone(&self.store),
            Arc::clone(pool),
            self.quotas.clone(),
        );
        let dir = self.root.join(self.storage.kind_dir(Kind::Active));
        let spawned = std::thread::Builder::new()
            .name("blank-trees".into())
            .spawn(move || {
                let mut made = Vec::with_capacity(BATCH);
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    make_blanks(&*storage, &store, quotas.as_deref(), &pool, &dir, &mut made)
                }));
                if run.is_err() {
                    // The pool must not wait for ids no one will let go; what exists of
                    // their trees is left to the next sweep (their ids are never reused).
                    log::error!(
                        "{}: making blank trees ahead panicked; the sweep takes what it left",
                        S::NAME
                    );
                    for id in made.drain(..) {
                        pool.release(id);
                    }
                }
                for id in pool.filled(made) {
                    delete_blank(&*storage, &pool, &dir, id);
                }
            });
        if let Err(e) = spawned {
            log::warn!("{}: no thread to make blank trees ahead: {e}", S::NAME);
            if let Some(pool) = &self.blanks {
                pool.filled(Vec::new());
            }
        }
    }

    /// Closes the pool, deletes the trees no create took, and waits until nothing the
    /// pool made is still being recorded or deleted: once it returns, no thread of this
    /// store touches the root.
    fn close_blanks(&self) {
        if let Some(pool) = &self.blanks {
            let dir = self.root.join(self.storage.kind_dir(Kind::Active));
            for id in pool.close() {
                delete_blank(&*self.storage, pool, &dir, id);
            }
            pool.settle();
        }
    }

    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let plan = self.store.read(|tx| tx.check_commit(key, name, opts))?;
            if plan.rebase && !self.storage.can_rebase() {
                return Err(Error::cannot_rebase(S::NAME, key, &opts.parent));
            }
            let active = self.tree(Kind::Active, plan.id);
            // The slow part, outside the write transaction: flush, measure, freeze.
            let prepared = (|| {
                if self.sync {
                    self.storage.flush(&active)?;
                }
                let usage = self.measure_active(plan.id, &active)?;
                let frozen = if self.separate_commit() {
                    let st = self.stage(Kind::Committed);
                    self.storage.freeze(&active, &st.path)?;
                    Some(st)
                } else {
                    None
                };
                Ok((usage, frozen))
            })();
            let (usage, mut frozen) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    // Removed (or committed) by another call meanwhile: end as if ordered.
                    match self.settled(|tx| tx.check_commit(key, name, opts)) {
                        Err(later) => return Err(later),
                        Ok(p) if p.id != plan.id => continue,
                        Ok(_) => return Err(e),
                    }
                }
            };
            let mut changed = false;
            let mut published = false;
            let mut retired = false;
            let res = self.store.write(|tx| {
                let id = tx.commit_active(key, name, usage, opts)?;
                if id != plan.id {
                    changed = true;
                    return Err(changed_error(key));
                }
                if let Some(st) = frozen.as_mut() {
                    self.publish(st, Kind::Committed, id)?;
                    published = true;
                    // The active tree is retired in the transaction, so no reader after
                    // it (fsck, a sweep) sees a tree no record owns. Should the commit
                    // fail after this, the record is still active and the next sweep
                    // renames it back (as after a failed remove).
                    rename_noreplace(&active, &self.retired(Kind::Active, id))
                        .map_err(|e| Error::io("retire the committed active tree", &active, e))?;
                    retired = true;
                }
                Ok(id)
            });
            match res {
                Ok(id) => {
                    if frozen.is_some() {
                        // Only space is at stake: cleanup deletes it if this fails.
                        self.discard(&self.retired(Kind::Active, id));
                    }
                    return Ok(());
                }
                Err(e) => {
                    if retired {
                        self.restore(Kind::Active, plan.id);
                    }
                    if published {
                        self.discard(&self.tree(Kind::Committed, plan.id));
                    }
                    if !changed {
                        return Err(e);
                    }
                }
            }
        }
        Err(changed_error(key))
    }

    fn remove_snapshot(&self, key: &str) -> Result<()> {
        let guard = self.removing.read().unwrap_or_else(|e| e.into_inner());
        let mut retired: Option<(Kind, u64)> = None;
        let res = self.store.write(|tx| {
            let (id, kind) = tx.remove(key)?;
            let src = self.tree(kind, id);
            // A rename within one directory: works on read-only subvolumes too, and is
            // undone if the transaction fails. Not fsynced: whichever of the rename and the
            // commit a power cut keeps, the sweep finishes or undoes the remove.
            match rename_noreplace(&src, &self.retired(kind, id)) {
                Ok(()) => retired = Some((kind, id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("retire snapshot tree", &src, e)),
            }
            Ok(())
        });
        if res.is_err() {
            if let Some((kind, id)) = retired {
                self.restore(kind, id);
            }
        }
        drop(guard);
        res?;
        if let (Some((kind, id)), false) = (retired, self.async_remove) {
            self.release_limit(&self.retired(kind, id), id);
            if let Err(e) = self.storage.delete(&self.retired(kind, id)) {
                log::warn!(
                    "removed snapshot {:?}, but not its tree (the next cleanup retries): {e}",
                    truncate_for_message(key)
                );
            }
        }
        Ok(())
    }

    fn restore(&self, kind: Kind, id: u64) {
        let src = self.retired(kind, id);
        if let Err(e) = rename_noreplace(&src, &self.tree(kind, id)) {
            if e.kind() != io::ErrorKind::NotFound {
                log::error!("restoring {} after a failed remove: {e}", src.display());
            }
        }
    }

    /// Repairs what a crash left and retires what nobody owns, inside one write
    /// transaction. Returns how many trees it retired.
    ///
    /// # Errors
    /// Unknown when a directory cannot be read or a rename fails.
    pub fn sweep(&self) -> Result<usize> {
        self.store.write(|tx| self.sweep_in(tx))
    }

    /// The kind of the live snapshot `id` when its tree belongs in `dir`.
    fn living_in(&self, tx: &impl Reader, id: u64, dir: &Path) -> Result<Option<Kind>> {
        Ok(tx
            .kind_of(id)?
            .filter(|&k| self.root.join(self.storage.kind_dir(k)) == dir))
    }

    fn sweep_in(&self, tx: &WriteTxn<'_>) -> Result<usize> {
        let mut n = 0;
        for dir in self.dirs() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(id) = name
                    .strip_prefix(RETIRED_PREFIX)
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    if let Some(kind) = self.living_in(tx, id, &dir)? {
                        if std::fs::symlink_metadata(dir.join(id.to_string())).is_err() {
                            log::warn!(
                                "restoring {} whose remove did not commit",
                                entry.path().display()
                            );
                            self.restore(kind, id);
                        }
                    }
                    continue;
                }
                let orphan = if let Ok(id) = name.parse::<u64>() {
                    self.living_in(tx, id, &dir)?.is_none()
                        && !self.blanks.as_ref().is_some_and(|b| b.holds(id))
                } else if name.starts_with(STAGING_PREFIX) {
                    // Checked per entry, after the listing saw it: a create registers its
                    // staging path before it makes anything there.
                    !self
                        .staging
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&entry.path())
                } else {
                    false
                };
                if orphan {
                    let src = entry.path();
                    log::info!("retiring orphan tree {}", src.display());
                    match self.retire_as(&src, &format!("orphan-{name}")) {
                        Ok(()) => n += 1,
                        // A failed create dropped its staging tree meanwhile.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("retire orphan", &src, e)),
                    }
                }
            }
        }
        Ok(n)
    }

    /// Deletes every retired tree (`rm-*`). Returns how many were deleted; a failure on one
    /// is logged and the others still go; the first error is returned.
    ///
    /// # Errors
    /// The first tree that could not be deleted.
    pub fn purge(&self) -> Result<usize> {
        let listing = self.removing.write().unwrap_or_else(|e| e.into_inner());
        let mut trees = Vec::new();
        for dir in self.dirs() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name();
                let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(RETIRED_PREFIX)) else {
                    continue;
                };
                // A live record's tree whose restore failed (no remove is between its
                // rename and its commit while the lock is held): never deleted.
                if let Ok(id) = rest.parse::<u64>() {
                    let live = self.store.read(|tx| self.living_in(tx, id, &dir))?;
                    if live.is_some() && std::fs::symlink_metadata(dir.join(rest)).is_err() {
                        log::error!(
                            "{} belongs to a live snapshot (id {id}) whose restore failed: \
                             kept; cleanup retries the restore",
                            entry.path().display()
                        );
                        continue;
                    }
                }
                trees.push(entry.path());
            }
        }
        drop(listing);
        let mut first = None;
        let mut n = 0;
        for t in &trees {
            // `rm-<id>`; an orphan's or another variant's project is left alone.
            if let Some(id) = t
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(RETIRED_PREFIX))
                .and_then(|n| n.parse().ok())
            {
                self.release_limit(t, id);
            }
            match self.storage.delete(t) {
                Ok(()) => n += 1,
                Err(e) => {
                    log::warn!("deleting {}: {e}", t.display());
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(n), Err)
    }
}

impl<S: Storage> Snapshotter for SnapshotStore<S> {
    fn stat(&self, key: &str) -> Result<Info> {
        let (id, info) = self.store.read(|tx| tx.id_and_info(key))?;
        Ok(self.decorate(id, info))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        // A synthesized label is never stored, even when a caller sends it back.
        let mut info = info.clone();
        if let Some(k) = self.storage.synthesized_label() {
            info.labels.remove(k);
        }
        let (id, new) = self.store.write(|tx| {
            let before = tx.info(&info.name)?;
            let new = tx.update_info(&info, fieldpaths)?;
            // Refused here, the transaction aborts: nothing changes.
            self.storage
                .check_update(&new, new.kind, &before.labels, &new.labels)?;
            let id = tx.snapshot(&new.name)?.id;
            if new.kind == Kind::Active
                && before.labels.get(MAX_SIZE_LABEL) != new.labels.get(MAX_SIZE_LABEL)
            {
                // A changed limit applies at once (set again at the next open should the
                // commit not reach the disk).
                let tree = self.tree(Kind::Active, id);
                match self.limit_of(Kind::Active, &new.labels)? {
                    Some(limit) => self.limit_tree(&tree, id, Some(limit), false)?,
                    None => self.release_limit(&tree, id),
                }
            }
            Ok((id, new))
        })?;
        Ok(self.decorate(id, new))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let (s, stored) = self
            .store
            .read(|tx| Ok((tx.snapshot(key)?, tx.stored_usage(key)?.1)))?;
        if s.kind != Kind::Active {
            return Ok(stored);
        }
        match self.measure_active(s.id, &self.tree(Kind::Active, s.id)) {
            // Removed, committed or replaced by another call since the lookup: end as if
            // that call came first.
            Err(e) => match self.settled(|tx| tx.snapshot(key)) {
                Ok(now) if now == s => Err(e),
                Ok(_) => Err(changed_error(key)),
                Err(later) => Err(later),
            },
            ok => ok,
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (s, labels) = self.store.read(|tx| {
            let s = tx.snapshot(key)?;
            let labels = match s.kind != Kind::Committed && self.storage.mount_labels(&s) {
                true => Some(tx.info(key)?.labels),
                false => None,
            };
            Ok((s, labels))
        })?;
        if s.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {:?} is committed: only active and view snapshots have mounts; \
                 mount an active or view snapshot made on it instead",
                truncate_for_message(key)
            )));
        }
        match self
            .storage
            .mounts(&s, &self.tree(s.kind, s.id), labels.as_ref())
        {
            // Committed or removed by another call since the lookup: end as if it came
            // first.
            Err(e) => match self.settled(|tx| tx.snapshot(key)) {
                Ok(now) if now == s => Err(e),
                Ok(_) => self.mounts(key),
                Err(later) => Err(later),
            },
            ok => ok,
        }
    }

    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, opts)
    }

    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, opts)
    }

    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        SnapshotStore::commit(self, name, key, opts)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.remove_snapshot(key)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        if self.storage.synthesized_label().is_none() {
            return self.store.walk(filters, f);
        }
        self.store.walk(filters, |info| {
            // The id is not in Info; a snapshot removed since its batch was read is skipped.
            match self.snapshot(&info.name) {
                Ok(s) => f(&self.decorate(s.id, info.clone())),
                Err(e) if e.is(ErrorKind::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn close(&self) -> Result<()> {
        self.close_blanks();
        self.store.close()?;
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(self)
    }

    fn mounts_never_block(&self) -> bool {
        // A pure mounts cannot fail, so the re-read after the writes in flight never runs.
        S::PURE_MOUNTS
    }
}

impl<S: Storage> Cleaner for SnapshotStore<S> {
    fn cleanup(&self) -> Result<()> {
        self.sweep()?;
        self.purge().map(drop)
    }

    fn fsck(&self, repair: bool) -> Result<FsckReport> {
        SnapshotStore::fsck(self, repair)
    }
}

/// A finding the audit saw outside any transaction, confirmed (or dropped) in one.
enum Candidate {
    Orphan {
        dir: PathBuf,
        id: u64,
    },
    Staging,
    Missing {
        key: String,
        id: u64,
        kind: Kind,
    },
    Leaked {
        id: Option<u64>,
        dir: PathBuf,
        // An idmapped clone left attached by a process killed during a mount.
        scratch: bool,
    },
}

impl<S: Storage> SnapshotStore<S> {
    /// Audits the store (see [`crate::fsck`]): cross-checks the records, the entries of the
    /// kind directories and the live mounts, measures what each finding holds and, with
    /// `repair`, deletes what is provably safe to delete (orphan and stale staging trees,
    /// and the retired trees awaiting cleanup). Reads run outside any transaction; what
    /// they suggest is confirmed in one short write transaction (which waits for the
    /// calls in flight), so a call racing the audit is never reported: other calls wait
    /// for the audit no longer than that transaction.
    ///
    /// # Errors
    /// Unknown when a kind directory, the metastore or `/proc/self/mountinfo` cannot be
    /// read; a repair that fails is reported in its finding's detail instead.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut report = FsckReport {
            backend: S::NAME.to_string(),
            root: self.root.clone(),
            ..FsckReport::default()
        };
        // What the directories hold.
        let mut candidates: Vec<(PathBuf, Candidate)> = Vec::new();
        let mut retired = Vec::new();
        for dir in self.dirs() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                report.directories += 1;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(RETIRED_PREFIX) {
                    retired.push(path);
                } else if let Ok(id) = name.parse::<u64>() {
                    let live = self.store.read(|tx| self.living_in(tx, id, &dir))?;
                    if live.is_none() && !self.blanks.as_ref().is_some_and(|b| b.holds(id)) {
                        candidates.push((
                            path,
                            Candidate::Orphan {
                                dir: dir.clone(),
                                id,
                            },
                        ));
                    }
                } else if name.starts_with(STAGING_PREFIX) {
                    candidates.push((path, Candidate::Staging));
                } else {
                    report.findings.push(Finding {
                        kind: FindingKind::UnknownEntry,
                        usage: crate::usage::disk_usage(&path).ok(),
                        path: Some(path),
                        key: None,
                        id: None,
                        owner: None,
                        detail: "the store never makes this: left as it is; move it out of \
                                 the root if it is yours"
                            .into(),
                        repaired: false,
                    });
                }
            }
        }
        // What the records expect.
        let ids = self.store.read(|tx| tx.id_map())?;
        report.records = ids.len();
        for (&id, key) in &ids {
            let Ok(s) = self.snapshot(key) else { continue };
            if s.id != id || !self.storage.has_tree(s.kind, !s.parent_ids.is_empty()) {
                continue;
            }
            let tree = self.tree(s.kind, id);
            if std::fs::symlink_metadata(&tree).is_err() {
                candidates.push((
                    tree,
                    Candidate::Missing {
                        key: key.clone(),
                        id,
                        kind: s.kind,
                    },
                ));
            }
        }
        // What the mounts use.
        let uses = crate::fsck::mount_uses(&crate::mount::mountinfo()?, &self.root);
        let mut seen_mounts = HashSet::new();
        let kind_dirs = self.dirs();
        for u in &uses {
            let rel = u.path.strip_prefix(&self.root).unwrap_or(&u.path);
            let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
            let (Some(kind_dir), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let dir = self.root.join(kind_dir.as_ref());
            if !kind_dirs.contains(&dir) {
                continue;
            }
            seen_mounts.insert(u.mount_point.clone());
            let id = name.parse::<u64>().ok();
            let leaked = match id {
                Some(id) => self
                    .store
                    .read(|tx| self.living_in(tx, id, &dir))?
                    .is_none(),
                None => name.starts_with(RETIRED_PREFIX),
            } || u.mount_point.starts_with(&self.root);
            let scratch = u
                .mount_point
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(crate::mount::idmap_scratch_pid)
                .is_some_and(crate::mount::process_gone);
            if leaked || scratch {
                candidates.push((
                    u.mount_point.clone(),
                    Candidate::Leaked { id, dir, scratch },
                ));
            }
        }
        report.mounts = seen_mounts.len();
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        candidates.dedup_by(|a, b| a.0 == b.0);

        // Confirmed in one write transaction: a call in flight has committed (or dropped
        // what it built) by the time it starts. Repairs only rename here; deleting is
        // after.
        let mut confirmed: Vec<(PathBuf, Candidate, bool)> = Vec::new();
        if !candidates.is_empty() {
            self.settled(|tx| {
                for (path, c) in candidates.drain(..) {
                    let exists = std::fs::symlink_metadata(&path).is_ok();
                    let real = match &c {
                        Candidate::Orphan { dir, id } => {
                            exists
                                && self.living_in(tx, *id, dir)?.is_none()
                                && !self.blanks.as_ref().is_some_and(|b| b.holds(*id))
                        }
                        Candidate::Staging => {
                            exists
                                && !self
                                    .staging
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .contains(&path)
                        }
                        Candidate::Missing { key, id, .. } => {
                            !exists && tx.snapshot(key).is_ok_and(|s| s.id == *id)
                        }
                        Candidate::Leaked { scratch: true, .. } => true,
                        Candidate::Leaked { id, dir, .. } => match id {
                            Some(id) => {
                                self.living_in(tx, *id, dir)?.is_none()
                                    || path.starts_with(&self.root)
                            }
                            None => true,
                        },
                    };
                    if real {
                        confirmed.push((path, c, false));
                    }
                }
                Ok(())
            })?;
        }
        for (path, c, _) in &confirmed {
            let usage = match c {
                Candidate::Orphan { .. } | Candidate::Staging => {
                    crate::usage::disk_usage(path).ok()
                }
                _ => None,
            };
            let (kind, key, id, detail) = match c {
                Candidate::Orphan { id, .. } => (
                    FindingKind::OrphanDirectory,
                    None,
                    Some(*id),
                    "no record owns this tree (left by a crash): `snapshotctl fsck --repair` \
                     deletes it"
                        .to_string(),
                ),
                Candidate::Staging => (
                    FindingKind::StaleStaging,
                    None,
                    None,
                    "a create or commit that never finished (its process died): \
                     `snapshotctl fsck --repair` deletes it"
                        .to_string(),
                ),
                Candidate::Missing { key, id, kind } => (
                    FindingKind::RecordWithoutDirectory,
                    Some(key.clone()),
                    Some(*id),
                    format!(
                        "the {kind} snapshot's tree is missing, so its data is gone: remove \
                         the snapshot (and any on it) and unpack or build it again; fsck \
                         never removes a record"
                    ),
                ),
                Candidate::Leaked { id, scratch, .. } => (
                    FindingKind::LeakedMount,
                    None,
                    *id,
                    match (*scratch, path.starts_with(&self.root)) {
                        (true, _) => "an idmapped clone of a layer that a process killed \
                                      during a mount left attached (it pins the layer's \
                                      filesystem): `snapshotctl fsck --repair` detaches it"
                            .to_string(),
                        (false, true) => "a mount inside the store's root: unmount it (umount -l) \
                                 once nothing uses it"
                            .to_string(),
                        (false, false) => "mounts a tree of a snapshot that no longer exists \
                                           (its space is freed only when it is unmounted): \
                                           unmount it (umount -l) once nothing uses it; fsck \
                                           never unmounts it"
                            .to_string(),
                    },
                ),
            };
            let owner = key.as_deref().and_then(crate::fsck::containerd_owner);
            report.findings.push(Finding {
                kind,
                path: Some(path.clone()),
                key,
                id,
                usage,
                owner,
                detail,
                repaired: false,
            });
        }
        for path in retired {
            report.pending.push(Pending {
                usage: crate::usage::disk_usage(&path).ok(),
                path,
                deleted: false,
            });
        }
        if repair {
            self.repair(&mut report)?;
        }
        report
            .findings
            .sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
        Ok(report)
    }

    /// Retires the confirmed orphan and stale staging trees (in one transaction, checked
    /// again there) and deletes every retired tree.
    fn repair(&self, report: &mut FsckReport) -> Result<()> {
        let dirs = self.dirs();
        self.settled(|tx| {
            for f in report.findings.iter_mut() {
                let Some(path) = f.path.clone() else { continue };
                let still = match f.kind {
                    FindingKind::OrphanDirectory => {
                        let (Some(id), Some(dir)) = (f.id, path.parent()) else {
                            continue;
                        };
                        dirs.iter().any(|d| d == dir)
                            && self.living_in(tx, id, dir)?.is_none()
                            && !self.blanks.as_ref().is_some_and(|b| b.holds(id))
                    }
                    FindingKind::StaleStaging => !self
                        .staging
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&path),
                    _ => continue,
                };
                if !still {
                    continue;
                }
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                match self.retire_as(&path, &format!("orphan-{name}")) {
                    Ok(()) => f.repaired = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => f.repaired = true,
                    Err(e) => f.detail = format!("{}; the repair failed: {e}", f.detail),
                }
            }
            Ok(())
        })?;
        // A dead process's idmapped clones: detached (the overlay made from one keeps its
        // own reference) and their scratch directories removed.
        for f in report.findings.iter_mut() {
            let Some(mount_point) = f.path.clone() else {
                continue;
            };
            let Some(scratch) = mount_point.parent().filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(crate::mount::idmap_scratch_pid)
                    .is_some_and(crate::mount::process_gone)
            }) else {
                continue;
            };
            if f.kind != FindingKind::LeakedMount {
                continue;
            }
            match rustix::mount::unmount(&mount_point, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) => {
                    let _ = std::fs::remove_dir(&mount_point);
                    let _ = std::fs::remove_dir(scratch);
                    f.repaired = true;
                }
                Err(e) => f.detail = format!("{}; detaching failed: {e}", f.detail),
            }
        }
        let _ = self.purge();
        for p in report.pending.iter_mut() {
            p.deleted = std::fs::symlink_metadata(&p.path).is_err();
        }
        // What a failed delete kept is a retired tree: cleanup retries it.
        for f in report.findings.iter_mut().filter(|f| f.repaired) {
            if let Some(path) = &f.path {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let retired = path.with_file_name(format!("{RETIRED_PREFIX}orphan-{name}"));
                if std::fs::symlink_metadata(&retired).is_ok() {
                    f.detail = format!(
                        "{}; retired to {} but not yet deleted: cleanup retries",
                        f.detail,
                        retired.display()
                    );
                }
            }
        }
        Ok(())
    }
}

impl<S: Storage> Drop for SnapshotStore<S> {
    fn drop(&mut self) {
        self.close_blanks();
    }
}

/// Makes up to [`BATCH`] blank active trees in `dir` under reserved ids and makes them
/// durable; leaves in `made` the ids of those made (held), none when the flush failed.
/// Every id in `made` is held, also when this panics.
fn make_blanks<S: Storage>(
    storage: &S,
    store: &MetaStore,
    quotas: Option<&ProjectQuotas>,
    pool: &Blanks,
    dir: &Path,
    made: &mut Vec<u64>,
) {
    let ids = match store.reserve_ids(BATCH) {
        Ok(ids) => ids,
        Err(e) => {
            log::warn!("{}: reserving ids for blank trees: {e}", S::NAME);
            return;
        }
    };
    for id in ids {
        // Held before anything exists at the path, so a sweep never takes it for an orphan.
        if !pool.hold(id) {
            break;
        }
        made.push(id);
        let tree = dir.join(id.to_string());
        let made_tree = storage
            .fill(&tree, Kind::Active, None, &Labels::new())
            .and_then(|()| match quotas {
                // The layer's project, durable with the tree.
                Some(q) => {
                    let dirs = storage.quota_dirs(&tree);
                    match q.assign(id, &dirs) {
                        Ok(true) => dirs.iter().try_for_each(|d| fsync_dir(d)),
                        Ok(false) => Ok(()),
                        Err(e) => {
                            log::warn!("{}: {e}: the layer gets no project", S::NAME);
                            Ok(())
                        }
                    }
                }
                None => Ok(()),
            });
        if let Err(e) = made_tree {
            log::warn!("{}: making a blank tree ahead: {e}", S::NAME);
            delete_blank(storage, pool, dir, id);
            made.pop();
            break;
        }
    }
    let synced = made
        .iter()
        .try_for_each(|id| storage.sync_published(&dir.join(id.to_string())));
    if let Err(e) = synced {
        log::warn!("{}: flushing blank trees made ahead: {e}", S::NAME);
        // Each id leaves `made` only once its tree is gone and it is let go.
        while let Some(&id) = made.last() {
            delete_blank(storage, pool, dir, id);
            made.pop();
        }
    }
}

/// Deletes the blank tree `id` (a leftover is the next sweep's) and lets its id go.
fn delete_blank<S: Storage>(storage: &S, pool: &Blanks, dir: &Path, id: u64) {
    let tree = dir.join(id.to_string());
    if std::fs::symlink_metadata(&tree).is_ok() {
        if let Err(e) = storage.delete(&tree) {
            log::warn!("{}: deleting blank tree {}: {e}", S::NAME, tree.display());
        }
    }
    pool.release(id);
}

fn changed_error(key: &str) -> Error {
    Error::unavailable(format!(
        "snapshot {:?}: its parent or key changed {ATTEMPTS} times during the call: retry it",
        truncate_for_message(key)
    ))
}

fn create_private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(d)
        .map_err(|e| Error::io("create directory", d, e))
}

/// Implements [`Snapshotter`] and [`Cleaner`] for a backend type that wraps a
/// [`SnapshotStore`] in the field `$field`, forwarding every call.
#[macro_export]
macro_rules! delegate_snapshotter {
    ($ty:ty, $field:ident) => {
        impl $crate::Snapshotter for $ty {
            fn stat(&self, key: &str) -> $crate::Result<$crate::Info> {
                self.$field.stat(key)
            }
            fn update(
                &self,
                info: &$crate::Info,
                fieldpaths: &[String],
            ) -> $crate::Result<$crate::Info> {
                self.$field.update(info, fieldpaths)
            }
            fn usage(&self, key: &str) -> $crate::Result<$crate::Usage> {
                self.$field.usage(key)
            }
            fn mounts(&self, key: &str) -> $crate::Result<Vec<$crate::Mount>> {
                self.$field.mounts(key)
            }
            fn prepare(
                &self,
                key: &str,
                parent: &str,
                opts: &$crate::CreateOptions,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.$field.prepare(key, parent, opts)
            }
            fn view(
                &self,
                key: &str,
                parent: &str,
                opts: &$crate::CreateOptions,
            ) -> $crate::Result<Vec<$crate::Mount>> {
                self.$field.view(key, parent, opts)
            }
            fn commit(
                &self,
                name: &str,
                key: &str,
                opts: &$crate::CommitOptions,
            ) -> $crate::Result<()> {
                $crate::Snapshotter::commit(&self.$field, name, key, opts)
            }
            fn remove(&self, key: &str) -> $crate::Result<()> {
                self.$field.remove(key)
            }
            fn walk(
                &self,
                filters: &[String],
                f: &mut dyn FnMut(&$crate::Info) -> $crate::Result<()>,
            ) -> $crate::Result<()> {
                self.$field.walk(filters, f)
            }
            fn close(&self) -> $crate::Result<()> {
                self.$field.close()
            }
            fn mounts_never_block(&self) -> bool {
                $crate::Snapshotter::mounts_never_block(&self.$field)
            }
            fn as_cleaner(&self) -> Option<&dyn $crate::Cleaner> {
                Some(self)
            }
        }
        impl $crate::Cleaner for $ty {
            fn cleanup(&self) -> $crate::Result<()> {
                self.$field.cleanup()
            }
            fn fsck(&self, repair: bool) -> $crate::Result<$crate::fsck::FsckReport> {
                $crate::Cleaner::fsck(&self.$field, repair)
            }
        }
    };
}
