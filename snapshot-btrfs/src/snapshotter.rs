//! The btrfs snapshotter.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use snapshot_core::layout::{fsync_dir, rename_noreplace, RootLock};
use snapshot_core::metastore::{MetaStore, Reader, StoreOptions};
use snapshot_core::{
    CommitOptions, CreateOptions, Error, Info, Kind, Mount, Result, Snapshotter, Usage,
};

use crate::error::BtrfsError;
use crate::sys;

const STAGING_PREFIX: &str = "new-";
const RETIRED_PREFIX: &str = "rm-";

/// Options of [`BtrfsSnapshotter::open_with`].
#[derive(Debug, Clone, Default)]
pub struct BtrfsOptions {
    /// Options of the metastore (durability).
    pub store: StoreOptions,
}

/// How the usage of an active snapshot was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The subvolume's qgroup (quotas are on): `size` is its exclusive bytes.
    Qgroup,
    /// A walk of the tree ([`snapshot_core::usage::disk_usage`]).
    Walk,
}

/// A snapshotter keeping each snapshot in its own btrfs subvolume.
///
/// Layout under the root (which must be on btrfs):
/// ```text
/// <root>/metadata/         the LMDB metastore
/// <root>/active/<id>       writable subvolume of an active snapshot
/// <root>/view/<id>         read-only snapshot of a view's parent
/// <root>/snapshots/<id>    read-only subvolume of a committed snapshot
/// <kind dir>/new-*         a subvolume being created (staging)
/// <kind dir>/rm-<id>       a removed subvolume waiting for deletion
/// ```
/// Mounts are `btrfs` mounts of the filesystem's device with `subvolid=<n>`, plus `ro` for
/// every kind but active.
pub struct BtrfsSnapshotter {
    root: PathBuf,
    device: String,
    sysfs: Option<PathBuf>,
    store: MetaStore,
    staging_counter: AtomicU64,
    lock: std::sync::Mutex<Option<RootLock>>,
    durable: bool,
}

impl std::fmt::Debug for BtrfsSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtrfsSnapshotter")
            .field("root", &self.root)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl BtrfsSnapshotter {
    /// Opens (or creates) a snapshotter on `root` with default options.
    ///
    /// # Errors
    /// See [`open_with`](Self::open_with).
    pub fn open(root: &Path) -> Result<BtrfsSnapshotter> {
        Self::open_with(root, &BtrfsOptions::default())
    }

    /// Opens (or creates) a snapshotter on `root`, then deletes the subvolumes no record
    /// owns (left by a process killed mid-operation) and restores any that a removal did
    /// not finish taking away.
    ///
    /// # Errors
    /// FailedPrecondition when `root` is not on btrfs; Unknown when the device cannot be
    /// found in `/proc/self/mountinfo`, the directories cannot be made, or the metastore
    /// cannot be opened.
    pub fn open_with(root: &Path, opts: &BtrfsOptions) -> Result<BtrfsSnapshotter> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::io("create snapshotter root", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| Error::io("resolve", root, e))?;
        sys::statfs_require_btrfs(&root)?;
        let device = sys::btrfs_device(&root)?;
        let lock = RootLock::acquire(&root)?;
        for kind in [Kind::Active, Kind::View, Kind::Committed] {
            let d = kind_dir(&root, kind);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&d)
                .map_err(|e| Error::io("create directory", &d, e))?;
        }
        let store = MetaStore::open(&root.join("metadata"), &opts.store)?;
        let sn = BtrfsSnapshotter {
            sysfs: sys::sysfs_dir(&device),
            root,
            device,
            store,
            staging_counter: AtomicU64::new(0),
            lock: std::sync::Mutex::new(Some(lock)),
            durable: !opts.store.no_sync,
        };
        sn.sweep()?;
        Ok(sn)
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The block device of the root's btrfs filesystem, the source of every mount.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The usage of the active snapshot `key` and how it was measured: the qgroup's
    /// exclusive bytes when quotas are on (after a `syncfs`, so unwritten data counts),
    /// else a walk. With quotas the inodes are counted from the subvolume's inode items
    /// (`BTRFS_IOC_TREE_SEARCH`), so nothing walks the tree.
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition when it is not active.
    pub fn active_usage(&self, key: &str) -> Result<(Usage, UsageSource)> {
        let s = self.store.read(|tx| tx.snapshot(key))?;
        if s.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key_m:?} is {}: live usage is measured for active snapshots only",
                s.kind.as_filter_str(),
                key_m = snapshot_core::keyspace::truncate_for_message(key)
            )));
        }
        self.measure(&self.path(Kind::Active, s.id))
    }

    fn measure(&self, path: &Path) -> Result<(Usage, UsageSource)> {
        if let Some(sysfs) = &self.sysfs {
            let id = sys::subvolume_id(path)?;
            // Only qgroup figures need the flush (unwritten data is not in them yet); with
            // quotas off the walk sees every file as it is, so nothing is flushed.
            if sys::read_qgroup(sysfs, id)?.is_none() {
                return Ok((snapshot_core::usage::disk_usage(path)?, UsageSource::Walk));
            }
            sys::syncfs(path)?;
            if let Some(q) = sys::read_qgroup(sysfs, id)? {
                let inodes = sys::count_inodes(path, id)?;
                return Ok((
                    Usage {
                        size: q.exclusive,
                        inodes,
                    },
                    UsageSource::Qgroup,
                ));
            }
        }
        Ok((snapshot_core::usage::disk_usage(path)?, UsageSource::Walk))
    }

    fn path(&self, kind: Kind, id: u64) -> PathBuf {
        kind_dir(&self.root, kind).join(id.to_string())
    }

    fn staging_path(&self, kind: Kind) -> PathBuf {
        let n = self.staging_counter.fetch_add(1, Ordering::Relaxed);
        kind_dir(&self.root, kind).join(format!("{STAGING_PREFIX}{}-{n}", std::process::id()))
    }

    fn mounts_for(&self, kind: Kind, id: u64) -> Result<Vec<Mount>> {
        let subvolid = sys::subvolume_id(&self.path(kind, id))?;
        Ok(vec![btrfs_mount(&self.device, subvolid, kind)])
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> Result<Vec<Mount>> {
        // The subvolume is built under a staging name before the write transaction, so the
        // writer lock is not held across the btrfs transaction commit it waits for.
        let parent_id = if parent.is_empty() {
            Some(None)
        } else {
            self.store
                .read(|tx| tx.snapshot(parent))
                .ok()
                .filter(|p| p.kind == Kind::Committed)
                .map(|p| Some(p.id))
        };
        let mut current: Option<PathBuf> = None;
        if let Some(pid) = parent_id {
            let staging = self.staging_path(kind);
            match pid {
                None if kind == Kind::View => {
                    // A view without parent is an empty read-only tree.
                    sys::create_subvolume(&staging)?;
                    if let Err(e) = sys::set_read_only(&staging) {
                        discard(&staging);
                        return Err(e.into());
                    }
                }
                None => {
                    sys::create_subvolume(&staging)?;
                }
                Some(pid) => {
                    let src = self.path(Kind::Committed, pid);
                    sys::snapshot_subvolume(&src, &staging, kind == Kind::View)?;
                }
            }
            current = Some(staging);
        }
        let res = self.store.write(|tx| {
            let s = tx.create(kind, key, parent, &opts.labels)?;
            let Some(cur) = current.clone() else {
                // The parent looked unusable before but passed now: it changed meanwhile.
                return Err(Error::unavailable(format!(
                    "parent {parent_m:?} of {key_m:?} changed during the call: retry",
                    key_m = snapshot_core::keyspace::truncate_for_message(key),
                    parent_m = snapshot_core::keyspace::truncate_for_message(parent)
                )));
            };
            if parent_id.flatten() != s.parent_ids.first().copied() {
                return Err(Error::unavailable(format!(
                    "parent {parent_m:?} of {key_m:?} was replaced during the call: retry",
                    key_m = snapshot_core::keyspace::truncate_for_message(key),
                    parent_m = snapshot_core::keyspace::truncate_for_message(parent)
                )));
            }
            let target = self.path(kind, s.id);
            place(&cur, &target, self.durable)?;
            current = Some(target);
            Ok(s)
        });
        match res {
            Ok(s) => self.mounts_for(kind, s.id),
            Err(e) => {
                if let Some(cur) = current {
                    discard(&cur);
                }
                Err(e)
            }
        }
    }

    /// Deletes subvolumes no record owns and finishes or undoes interrupted removals.
    fn sweep(&self) -> Result<()> {
        let mut discard_list = Vec::new();
        let mut restore_list = Vec::new();
        self.store.read(|tx| {
            let ids = tx.id_map()?;
            let kind_of = |id: u64| -> Result<Option<Kind>> {
                match ids.get(&id) {
                    Some(key) => Ok(Some(tx.snapshot(key)?.kind)),
                    None => Ok(None),
                }
            };
            for kind in [Kind::Active, Kind::View, Kind::Committed] {
                let dir = kind_dir(&self.root, kind);
                let entries =
                    fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if let Ok(id) = name.parse::<u64>() {
                        // A crash mid-commit leaves snapshots/<id> of a still active
                        // record, or active/<id> of a committed one.
                        if kind_of(id)? != Some(kind) {
                            discard_list.push(entry.path());
                        }
                    } else if name.starts_with(STAGING_PREFIX) {
                        discard_list.push(entry.path());
                    } else if let Some(id) = name
                        .strip_prefix(RETIRED_PREFIX)
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        // Renamed aside, but the removal never committed: put it back.
                        if kind_of(id)? == Some(kind) && !self.path(kind, id).exists() {
                            restore_list.push((entry.path(), self.path(kind, id)));
                        } else {
                            discard_list.push(entry.path());
                        }
                    }
                }
            }
            Ok(())
        })?;
        for (from, to) in restore_list {
            log::info!("restoring {} whose removal did not commit", to.display());
            place(&from, &to, false)?;
        }
        for p in discard_list {
            log::info!("deleting orphan subvolume {}", p.display());
            sys::delete_subvolume(&p)?;
        }
        Ok(())
    }
}

impl Snapshotter for BtrfsSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.store.read(|tx| tx.info(key))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.store.write(|tx| tx.update_info(info, fieldpaths))
    }

    /// Active snapshots are measured live (qgroup exclusive bytes when quotas are on,
    /// else a walk); views and committed snapshots report what was stored (a view owns
    /// nothing, a committed snapshot reports its usage at commit).
    fn usage(&self, key: &str) -> Result<Usage> {
        let (s, stored) = self
            .store
            .read(|tx| Ok((tx.snapshot(key)?, tx.stored_usage(key)?.1)))?;
        if s.kind != Kind::Active {
            return Ok(stored);
        }
        Ok(self.measure(&self.path(Kind::Active, s.id))?.0)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.store.read(|tx| tx.snapshot(key))?;
        if s.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key_m:?} is committed: mounts are given for active and view snapshots only", key_m = snapshot_core::keyspace::truncate_for_message(key))));
        }
        self.mounts_for(s.kind, s.id)
    }

    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, opts)
    }

    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, opts)
    }

    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        if !opts.parent.is_empty()
            && self
                .store
                .read(|tx| tx.check_commit(key, name, opts))?
                .rebase
        {
            return Err(Error::cannot_rebase("btrfs", key, &opts.parent));
        }
        // Checked up front only to avoid snapshotting for a commit that must fail; the
        // write transaction below makes the real checks, in containerd's order.
        let pre = self.store.read(|tx| {
            let name_free = tx.snapshot(name).is_err();
            Ok((name_free, tx.snapshot(key).ok()))
        })?;
        let (usage, staged) = match pre {
            (true, Some(s)) if s.kind == Kind::Active => {
                let src = self.path(Kind::Active, s.id);
                let usage = self.measure(&src)?.0;
                let staging = self.staging_path(Kind::Committed);
                sys::snapshot_subvolume(&src, &staging, true)?;
                (usage, Some((s.id, staging)))
            }
            _ => (Usage::default(), None),
        };
        let mut current = staged.as_ref().map(|(_, p)| p.clone());
        let res = self.store.write(|tx| {
            let id = tx.commit_active(key, name, usage, opts)?;
            let (staged_id, cur) = match (&staged, &current) {
                (Some((sid, _)), Some(cur)) => (*sid, cur.clone()),
                _ => {
                    return Err(Error::unavailable(format!(
                        "snapshot {key_m:?} changed during commit: retry",
                        key_m = snapshot_core::keyspace::truncate_for_message(key)
                    )))
                }
            };
            if staged_id != id {
                return Err(Error::unavailable(format!(
                    "snapshot {key_m:?} was replaced during commit: retry",
                    key_m = snapshot_core::keyspace::truncate_for_message(key)
                )));
            }
            let target = self.path(Kind::Committed, id);
            place(&cur, &target, self.durable)?;
            current = Some(target);
            Ok(id)
        });
        match res {
            Ok(id) => {
                let active = self.path(Kind::Active, id);
                // Only space is at stake: open's sweep deletes it if this fails (e.g. the
                // active subvolume is still mounted).
                if let Err(e) = sys::delete_subvolume(&active) {
                    log::warn!("deleting committed active subvolume: {e}");
                }
                Ok(())
            }
            Err(e) => {
                if let Some(cur) = current {
                    discard(&cur);
                }
                Err(e)
            }
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut retired: Option<(PathBuf, PathBuf)> = None;
        let res = self.store.write(|tx| {
            let (id, kind) = tx.remove(key)?;
            let src = self.path(kind, id);
            let dst = kind_dir(&self.root, kind).join(format!("{RETIRED_PREFIX}{id}"));
            // A rename inside the same directory works on read-only subvolumes too,
            // and can be undone if the transaction fails.
            match rename_noreplace(&src, &dst) {
                Ok(()) => retired = Some((src, dst)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    log::warn!(
                        "removing {key:?}: its subvolume {} is already gone",
                        src.display()
                    );
                }
                Err(e) => return Err(BtrfsError::io("rename aside", src, e).into()),
            }
            Ok(())
        });
        match res {
            Ok(()) => {
                if let Some((_, dst)) = retired {
                    if let Err(e) = sys::delete_subvolume(&dst) {
                        log::warn!("deleting removed subvolume (open retries it): {e}");
                    }
                }
                Ok(())
            }
            Err(e) => {
                if let Some((src, dst)) = retired {
                    if let Err(r) = rename_noreplace(&dst, &src) {
                        log::error!(
                            "restoring {} from {} after a failed remove: {r}",
                            src.display(),
                            dst.display()
                        );
                    }
                }
                Err(e)
            }
        }
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.store.walk(filters, f)
    }

    fn close(&self) -> Result<()> {
        self.store.close()?;
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
}

/// The mount of subvolume `subvolid` of `device` for a snapshot of `kind`: `ro` for every
/// kind but active (containerd's btrfs shape).
pub fn btrfs_mount(device: &str, subvolid: u64, kind: Kind) -> Mount {
    let mut options = vec![format!("subvolid={subvolid}")];
    if kind != Kind::Active {
        options.push("ro".to_string());
    }
    Mount::new("btrfs", device, options)
}

/// Deletes a snapshotter root made by [`BtrfsSnapshotter`]: every subvolume in it, then
/// the directory. Close the snapshotter first.
///
/// # Errors
/// Unknown when a subvolume or the directory cannot be deleted.
pub fn remove_root(root: &Path) -> Result<()> {
    for kind in [Kind::Active, Kind::View, Kind::Committed] {
        let dir = kind_dir(root, kind);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            sys::delete_subvolume(&entry.path())?;
        }
    }
    match fs::remove_dir_all(root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", root, e)),
        _ => Ok(()),
    }
}

fn kind_dir(root: &Path, kind: Kind) -> PathBuf {
    root.join(match kind {
        Kind::Active => "active",
        Kind::View => "view",
        Kind::Committed => "snapshots",
    })
}

/// Renames `from` to `to` without replacing anything. A `to` left by a process killed
/// before its transaction committed (ids are handed out again then) is deleted first.
fn place(from: &Path, to: &Path, durable: bool) -> Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        log::info!(
            "deleting stale subvolume {} of an uncommitted id",
            to.display()
        );
        sys::delete_subvolume(to)?;
    }
    rename_noreplace(from, to).map_err(|e| BtrfsError::io("rename into place", from, e))?;
    // The rename is durable only once its directory is: the metastore's commit that
    // follows must not outlive it across a power cut.
    if durable {
        if let Some(dir) = to.parent() {
            fsync_dir(dir)?;
        }
    }
    Ok(())
}

/// Deletes a subvolume on an error path; a failure is logged (open sweeps it later).
fn discard(path: &Path) {
    if let Err(e) = sys::delete_subvolume(path) {
        log::warn!("deleting subvolume after a failed operation: {e}");
    }
}
