//! [`OverlaySnapshotter`]: the [`Snapshotter`](snapshot_core::Snapshotter) on overlayfs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snapshot_core::idmap::{IdMapping, GID_MAPPING_LABEL, UID_MAPPING_LABEL};
use snapshot_core::keyspace::truncate_for_message;
use snapshot_core::lifecycle::{SnapshotStore, Storage};
use snapshot_core::metastore::Snapshot;
use snapshot_core::usage::disk_usage;
use snapshot_core::{Error, Info, Kind, Labels, Mount, Result, Usage};

use crate::config::{OverlayConfig, UPPERDIR_LABEL, VOLATILE_LABEL};
use crate::error::OverlayError;
use crate::mounts::{build_mounts, MountSettings};
use crate::probe::{self, DTypeProbe, KernelFeatures};

/// The overlayfs snapshotter (containerd's `overlayfs`).
///
/// Layout: `<root>/metadata` (the LMDB metastore), `<root>/snapshots/<id>/fs` (each
/// layer) and `<root>/snapshots/<id>/work` (the overlay work directory of active
/// snapshots). A new active snapshot's `fs` takes the owner of its parent's `fs`; every
/// layer root is mode 0755.
///
/// Crash safety is the shared lifecycle's ([`SnapshotStore`]): a create builds its
/// directory under a staging name and renames it into place, durably, inside the metadata
/// transaction; a commit measures its layer before its transaction and keeps the
/// directory; a remove deletes the record and renames the directory to `rm-<id>` in one
/// transaction. Open and cleanup put back what a killed remove had renamed, and retire
/// every directory the metastore does not know.
#[derive(Debug)]
pub struct OverlaySnapshotter {
    inner: SnapshotStore<OverlayStorage>,
    config: OverlayConfig,
}

/// The overlay backend's [`Storage`]: `fs` and `work` directories, mounted as overlays.
#[derive(Debug)]
pub struct OverlayStorage {
    settings: MountSettings,
    features: KernelFeatures,
    upperdir_label: bool,
}

impl Storage for OverlayStorage {
    const NAME: &'static str = "overlay";
    const ASYNC_REMOVE: bool = true;
    const PURE_MOUNTS: bool = true;

    fn check_create(&self, _kind: Kind, labels: &Labels) -> Result<()> {
        idmapping(labels, self.features.idmapped_lowers).map(drop)
    }

    fn check_update(&self, info: &Info, kind: Kind, old: &Labels, new: &Labels) -> Result<()> {
        if kind == Kind::Committed {
            return Ok(());
        }
        for label in [UID_MAPPING_LABEL, GID_MAPPING_LABEL] {
            if old.get(label) != new.get(label) {
                return Err(Error::failed_precondition(format!(
                    "snapshot {:?}: label {label} is fixed when the snapshot is made (its \
                     layer's owner and its mounts follow it): prepare a new snapshot with \
                     the mapping you need",
                    truncate_for_message(&info.name)
                )));
            }
        }
        Ok(())
    }

    fn fill(&self, dst: &Path, kind: Kind, parent: Option<&Path>, labels: &Labels) -> Result<()> {
        make_dir(dst, 0o700)?;
        let fs = dst.join("fs");
        make_dir(&fs, 0o755)?;
        if kind == Kind::Active {
            make_dir(&dst.join("work"), 0o711)?;
        }
        self.own_layer(&fs, parent, labels)
    }

    fn blank_serves(&self, _has_parent: bool) -> bool {
        // A layer starts empty whatever its parent: only the owner is the parent's.
        true
    }

    fn adapt_blank(&self, tree: &Path, parent: Option<&Path>, labels: &Labels) -> Result<()> {
        self.own_layer(&tree.join("fs"), parent, labels)
    }

    fn quota_dirs(&self, tree: &Path) -> Vec<PathBuf> {
        // Copy-ups are made in work and renamed into fs: both carry the layer's project.
        vec![tree.join("fs"), tree.join("work")]
    }

    fn measure(&self, tree: &Path) -> Result<Usage> {
        disk_usage(&tree.join("fs"))
    }

    fn mounts(&self, s: &Snapshot, _tree: &Path, labels: Option<&Labels>) -> Result<Vec<Mount>> {
        let volatile = labels.is_some_and(|l| self.volatile(s.kind, l));
        // From the labels as stored, checked at create and fixed since (check_update).
        let idmap: Vec<String> = match (self.features.idmapped_lowers, labels) {
            (true, Some(l)) => IdMapping::from_labels(l)?
                .map(|m| m.mount_options())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(build_mounts(
            &self.settings,
            s.kind,
            s.id,
            &s.parent_ids,
            volatile,
            &idmap,
        ))
    }

    fn mount_labels(&self, s: &Snapshot) -> bool {
        // Any snapshot may be ID-mapped where the kernel can; otherwise only an active
        // overlay needs its labels (volatile): skip the label read elsewhere.
        self.features.idmapped_lowers
            || (self.features.volatile && s.kind == Kind::Active && !s.parent_ids.is_empty())
    }

    fn can_rebase(&self) -> bool {
        // A layer is a diff, so it can be committed onto another parent.
        true
    }

    fn synthesized_label(&self) -> Option<&'static str> {
        self.upperdir_label.then_some(UPPERDIR_LABEL)
    }

    fn label_value(&self, id: u64) -> String {
        self.settings.upper(id).to_string_lossy().into_owned()
    }
}

impl OverlayStorage {
    /// Gives a new layer `fs` its owner: on a parent, the host IDs of the container's
    /// root when the create is ID-mapped (containerd 2.x: the upper directory belongs to
    /// the mapped root, and the lower layers are idmapped at mount, never chowned), else
    /// the owner of the parent's layer. Without a parent the layer is mounted as an
    /// idmapped bind, which shows its owner (root, ID 0) as the mapped root already:
    /// chowning it would map it twice.
    fn own_layer(&self, fs: &Path, parent: Option<&Path>, labels: &Labels) -> Result<()> {
        let mapping = idmapping(labels, self.features.idmapped_lowers)?;
        match (mapping, parent) {
            (Some(m), Some(_)) => set_owner(fs, m.root()),
            (None, Some(parent)) => inherit_owner(&parent.join("fs"), fs),
            (_, None) => Ok(()),
        }
    }

    fn volatile(&self, kind: Kind, labels: &Labels) -> bool {
        let asked = labels.get(VOLATILE_LABEL).is_some_and(|v| v != "false");
        if asked && !self.features.volatile {
            log::debug!("{VOLATILE_LABEL} ignored: this kernel has no volatile overlay option");
        }
        asked && self.features.volatile && kind == Kind::Active
    }
}

impl OverlaySnapshotter {
    /// Opens (or creates) the snapshotter at `root`: probes the kernel (overlay present,
    /// `index`, `userxattr`, `volatile`) and the filesystem (`d_type`, read from entries the
    /// root already has, so a full disk does not stop a reopen), opens the metastore and
    /// sweeps the leftovers of a crash. A relative root is made absolute.
    ///
    /// # Errors
    /// InvalidArgument for a root that cannot be written into an overlay option (it holds
    /// `,` or `:`, or is not UTF-8), or for `redirect_dir` where `userxattr` is needed;
    /// Unavailable when the kernel has no overlayfs or another snapshotter, in this process
    /// or another, holds the root (its lock names the holder); FailedPrecondition when the
    /// root's filesystem lacks `d_type`; Unknown for I/O.
    pub fn open(root: &Path, config: OverlayConfig) -> Result<OverlaySnapshotter> {
        Self::open_with_probe(root, config, probe::supports_d_type)
    }

    /// [`open`](Self::open) with another `d_type` probe, so a test can stand in for a
    /// filesystem that cannot be made on its machine.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_probe(
        root: &Path,
        config: OverlayConfig,
        d_type_probe: DTypeProbe,
    ) -> Result<OverlaySnapshotter> {
        probe::check_overlay_available()?;
        let root = snapshot_core::lifecycle::prepare_root(root)?;
        if let Some(c) = root
            .to_str()
            .and_then(|r| r.chars().find(|c| [',', ':'].contains(c)))
        {
            return Err(Error::invalid_argument(format!(
                "overlay root {} holds {c:?}, which overlay mount options cannot carry \
                 (lowerdir= separates layers with ':' and options with ','): pick a root \
                 without ',' and ':'",
                root.display()
            )));
        }
        probe::check_d_type(&root, d_type_probe)?;
        let features = probe::detect(&root, config.userxattr)?;
        if config.redirect_dir && features.userxattr {
            return Err(OverlayError::RedirectDirWithUserxattr {
                path: root.clone(),
                source: io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()),
            }
            .into());
        }
        let storage = OverlayStorage {
            settings: MountSettings {
                snapshots_dir: root.join("snapshots"),
                index_off: features.index_off,
                userxattr: features.userxattr,
                redirect_dir: config.redirect_dir,
                extra_options: config.mount_options.clone(),
            },
            features,
            upperdir_label: config.upperdir_label,
        };
        Ok(OverlaySnapshotter {
            inner: SnapshotStore::open(&root, storage, &config.options)?,
            config,
        })
    }

    /// The snapshotter root (absolute).
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// What the kernel offered at open.
    pub fn features(&self) -> KernelFeatures {
        self.inner.storage().features
    }

    /// The options the snapshotter was opened with.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// Whether Remove leaves directories to cleanup (the options' `async_remove`, on by
    /// default).
    pub fn async_remove(&self) -> bool {
        self.inner.async_remove()
    }

    /// The shared lifecycle under this backend (checks, sweeps).
    pub fn store(&self) -> &SnapshotStore<OverlayStorage> {
        &self.inner
    }

    /// The layer directory (`<root>/snapshots/<id>/fs`) of snapshot `key`.
    ///
    /// # Errors
    /// NotFound for a missing key.
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let id = self.inner.snapshot(key)?.id;
        Ok(self.inner.storage().settings.upper(id))
    }

    /// Checks the metastore's invariants (keys, child links, the id counter) and that
    /// every snapshot has its directory. Returns the number of snapshots.
    ///
    /// # Errors
    /// Unknown naming the first inconsistency.
    pub fn check(&self) -> Result<usize> {
        self.inner.check()
    }
}

snapshot_core::delegate_snapshotter!(OverlaySnapshotter, inner);

/// `mkdir` with an exact mode: the umask does not apply (the suite runs with umask 0,
/// callers with whatever they have).
fn make_dir(path: &Path, mode: u32) -> Result<()> {
    let err = |source| OverlayError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(())
}

/// The ID mapping `labels` ask for, checked: `None` without the mapping labels.
///
/// # Errors
/// InvalidArgument naming the label for a malformed mapping; FailedPrecondition when
/// `supported` is false (a kernel before 5.19, whose overlay cannot take idmapped lower
/// layers).
pub fn idmapping(labels: &Labels, supported: bool) -> Result<Option<IdMapping>> {
    let Some(m) = IdMapping::from_labels(labels)? else {
        return Ok(None);
    };
    if !supported {
        let (a, b) = snapshot_core::idmap::IDMAPPED_OVERLAY_LOWERS;
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let why = match snapshot_core::idmap::overlay_idmaps_lowers() {
            true => format!(
                "the filesystem holding the snapshotter's root cannot be idmapped, or this \
                 process may not make idmapped mounts (the kernel, {release}, idmaps overlay \
                 lower layers, as Linux {a}.{b} and later do)"
            ),
            false => format!(
                "this kernel ({release}) cannot idmap overlay lower layers (Linux {a}.{b} or \
                 later can)"
            ),
        };
        return Err(Error::failed_precondition(format!(
            "labels {UID_MAPPING_LABEL}/{GID_MAPPING_LABEL} ask for an ID-mapped snapshot, \
             but {why}: drop remap-ids from containerd's proxy_plugins capabilities so it \
             chowns a copy instead"
        )));
    }
    Ok(Some(m))
}

/// Gives `fs` the owner of the parent's layer `parent_fs`, as containerd does: the
/// overlay's root takes the upper directory's owner, so without this a container on an
/// image whose root belongs to a user would see root's ownership instead.
fn inherit_owner(parent_fs: &Path, fs: &Path) -> Result<()> {
    let meta = std::fs::metadata(parent_fs).map_err(|source| OverlayError::StatParent {
        path: parent_fs.to_path_buf(),
        source,
    })?;
    set_owner(fs, (meta.uid(), meta.gid()))
}

/// Gives `fs` the owner `(uid, gid)`, made durable (an fsync of `fs`): the fsync of the
/// tree that follows a create does not carry it everywhere (btrfs logs only the directory
/// fsynced and the inodes new in it).
fn set_owner(fs: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    let set = |source| OverlayError::SetOwner {
        path: fs.to_path_buf(),
        source,
    };
    let cur = std::fs::symlink_metadata(fs).map_err(set)?;
    if (cur.uid(), cur.gid()) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::lchown(fs, Some(uid), Some(gid)).map_err(set)?;
    snapshot_core::layout::fsync_dir(fs)
}
