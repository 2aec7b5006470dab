//! The btrfs snapshotter.

use std::fs;
use std::path::{Path, PathBuf};

use snapshot_core::layout::fsync_dir;
use snapshot_core::lifecycle::{Options, SnapshotStore, Storage};
use snapshot_core::metastore::Snapshot;
use snapshot_core::{Error, Kind, Labels, Mount, Result, Usage};

use crate::sys;

/// Options of [`BtrfsSnapshotter::open_with`]: the options every backend takes.
pub type BtrfsOptions = Options;

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
/// <kind dir>/rm-*          a removed subvolume waiting for deletion
/// ```
/// Mounts are `btrfs` mounts of the filesystem's device with `subvolid=<n>`, plus `ro` for
/// every kind but active. The crash-safe order of every step is the shared one of
/// [`SnapshotStore`], with subvolumes for trees: a commit freezes the active subvolume
/// into a read-only snapshot under `snapshots/` and deletes the active one after.
#[derive(Debug)]
pub struct BtrfsSnapshotter {
    inner: SnapshotStore<BtrfsStorage>,
}

/// The btrfs backend's [`Storage`]: subvolumes and their snapshots.
#[derive(Debug)]
pub struct BtrfsStorage {
    device: String,
    sysfs: Option<PathBuf>,
}

impl Storage for BtrfsStorage {
    const NAME: &'static str = "btrfs";

    fn kind_dir(&self, kind: Kind) -> &'static str {
        kind_name(kind)
    }

    fn fill(&self, dst: &Path, kind: Kind, parent: Option<&Path>, _labels: &Labels) -> Result<()> {
        match parent {
            Some(parent) => {
                sys::snapshot_subvolume(parent, dst, kind == Kind::View)?;
            }
            None => {
                sys::create_subvolume(dst)?;
                // A view without parent is an empty read-only tree.
                if kind == Kind::View {
                    sys::set_read_only(dst)?;
                }
            }
        }
        Ok(())
    }

    fn measure(&self, tree: &Path) -> Result<Usage> {
        Ok(self.measure_with_source(tree)?.0)
    }

    fn freeze(&self, active: &Path, dst: &Path) -> Result<()> {
        sys::snapshot_subvolume(active, dst, true)?;
        Ok(())
    }

    fn delete(&self, tree: &Path) -> Result<()> {
        if fs::symlink_metadata(tree).is_err() {
            return Ok(());
        }
        match sys::delete_subvolume(tree) {
            // Another deleter (a purge racing a remove's own delete) took it first.
            Err(_) if fs::symlink_metadata(tree).is_err() => Ok(()),
            r => Ok(r?),
        }
    }

    fn sync_published(&self, tree: &Path) -> Result<()> {
        // A subvolume's link lives in its parent directory's tree: that is what the fsync
        // must reach (an fsync of the new subvolume itself does not log it).
        fsync_dir(tree.parent().unwrap_or(tree))
    }

    fn mounts(&self, s: &Snapshot, tree: &Path, _labels: Option<&Labels>) -> Result<Vec<Mount>> {
        let subvolid = sys::subvolume_id(tree)?;
        Ok(vec![btrfs_mount(&self.device, subvolid, s.kind)])
    }
}

impl BtrfsStorage {
    fn measure_with_source(&self, path: &Path) -> Result<(Usage, UsageSource)> {
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
}

impl BtrfsSnapshotter {
    /// Opens (or creates) a snapshotter on `root` with default options.
    ///
    /// # Errors
    /// See [`open_with`](Self::open_with).
    pub fn open(root: &Path) -> Result<BtrfsSnapshotter> {
        Self::open_with(root, &BtrfsOptions::default())
    }

    /// Opens (or creates) a snapshotter on `root`, then retires and deletes the
    /// subvolumes no record owns (left by a process killed mid-operation) and restores any
    /// that a removal did not finish taking away.
    ///
    /// # Errors
    /// FailedPrecondition when `root` is not on btrfs; Unavailable when another
    /// snapshotter holds the root; Unknown when the device cannot be found in
    /// `/proc/self/mountinfo`, the directories cannot be made, or the metastore cannot be
    /// opened.
    pub fn open_with(root: &Path, opts: &BtrfsOptions) -> Result<BtrfsSnapshotter> {
        let root = snapshot_core::lifecycle::prepare_root(root)?;
        let root = fs::canonicalize(&root).map_err(|e| Error::io("resolve", &root, e))?;
        sys::statfs_require_btrfs(&root)?;
        let device = sys::btrfs_device(&root)?;
        let storage = BtrfsStorage {
            sysfs: sys::sysfs_dir(&device),
            device,
        };
        Ok(BtrfsSnapshotter {
            inner: SnapshotStore::open(&root, storage, opts)?,
        })
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// The block device of the root's btrfs filesystem, the source of every mount.
    pub fn device(&self) -> &str {
        &self.inner.storage().device
    }

    /// The shared lifecycle under this backend (checks, sweeps).
    pub fn store(&self) -> &SnapshotStore<BtrfsStorage> {
        &self.inner
    }

    /// The usage of the active snapshot `key` and how it was measured: the qgroup's
    /// exclusive bytes when quotas are on (after a `syncfs`, so unwritten data counts),
    /// else a walk. With quotas the inodes are counted from the subvolume's inode items
    /// (`BTRFS_IOC_TREE_SEARCH`), so nothing walks the tree.
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition when it is not active.
    pub fn active_usage(&self, key: &str) -> Result<(Usage, UsageSource)> {
        let s = self.inner.snapshot(key)?;
        if s.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key_m:?} is {}: live usage is measured for active snapshots only",
                s.kind.as_filter_str(),
                key_m = snapshot_core::keyspace::truncate_for_message(key)
            )));
        }
        self.inner
            .storage()
            .measure_with_source(&self.inner.tree(Kind::Active, s.id))
    }
}

snapshot_core::delegate_snapshotter!(BtrfsSnapshotter, inner);

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
    root.join(kind_name(kind))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Active => "active",
        Kind::View => "view",
        Kind::Committed => "snapshots",
    }
}
