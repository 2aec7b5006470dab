//! [`OverlaySnapshotter`]: the [`Snapshotter`] on overlayfs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snapshot_core::layout::{Layout, Staging};
use snapshot_core::metastore::{MetaStore, Reader, StoreOptions};
use snapshot_core::usage::disk_usage;
use snapshot_core::{
    Cleaner, CommitOptions, CreateOptions, Error, Info, Kind, Mount, Result, Snapshotter, Usage,
};

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
/// Crash safety (DESIGN.md section 5): a create builds its directory under a staging name
/// and renames it into place inside the metadata transaction; a commit computes the usage
/// before its transaction; a remove deletes the record and renames the directory to
/// `rm-<id>` in one transaction. Open and [`Cleaner::cleanup`] put back what a killed
/// remove had renamed, and retire every directory the metastore does not know.
pub struct OverlaySnapshotter {
    layout: Layout,
    store: MetaStore,
    config: OverlayConfig,
    features: KernelFeatures,
    settings: MountSettings,
}

impl std::fmt::Debug for OverlaySnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySnapshotter")
            .field("root", &self.layout.root())
            .field("config", &self.config)
            .field("features", &self.features)
            .finish()
    }
}

impl OverlaySnapshotter {
    /// Opens (or creates) the snapshotter at `root`: probes the kernel (overlay present,
    /// `index`, `userxattr`, `volatile`) and the filesystem (`d_type`), opens the metastore
    /// and sweeps the leftovers of a crash.
    ///
    /// # Errors
    /// Unavailable when the kernel has no overlayfs or another snapshotter, in this
    /// process or another, holds the root (its lock names the holder); FailedPrecondition when the root's filesystem lacks `d_type`;
    /// InvalidArgument for `redirect_dir` where `userxattr` is needed; Unknown for I/O.
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
        // Layout::new makes the directories first, so the probe has somewhere to write.
        let mut layout = Layout::new(root)?;
        layout.set_no_sync(config.no_sync);
        probe::check_d_type(layout.snapshots_dir(), d_type_probe)?;
        let features = probe::detect(root, config.userxattr)?;
        if config.redirect_dir && features.userxattr {
            return Err(OverlayError::RedirectDirWithUserxattr {
                path: root.to_path_buf(),
                source: io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()),
            }
            .into());
        }
        let store = MetaStore::open(
            &layout.metadata_dir(),
            &StoreOptions {
                no_sync: config.no_sync,
                ..StoreOptions::default()
            },
        )?;
        let settings = MountSettings {
            snapshots_dir: layout.snapshots_dir().to_path_buf(),
            index_off: features.index_off,
            userxattr: features.userxattr,
            redirect_dir: config.redirect_dir,
            extra_options: config.mount_options.clone(),
        };
        let sn = OverlaySnapshotter {
            layout,
            store,
            config,
            features,
            settings,
        };
        sn.sweep()?;
        // A leftover that cannot be deleted now (an immutable file, a busy mount) must not
        // keep the node from managing its containers: it stays for the next cleanup.
        if !sn.config.async_remove {
            if let Err(e) = sn.layout.purge() {
                log::warn!(
                    "overlay snapshotter {}: deleting leftovers (cleanup retries): {e}",
                    sn.root().display()
                );
            }
        }
        Ok(sn)
    }

    /// The snapshotter root.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// What the kernel offered at open.
    pub fn features(&self) -> KernelFeatures {
        self.features
    }

    /// The options the snapshotter was opened with.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// The layer directory (`<root>/snapshots/<id>/fs`) of snapshot `key`.
    ///
    /// # Errors
    /// NotFound for a missing key.
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf> {
        let id = self.store.read(|tx| tx.snapshot(key))?.id;
        Ok(self.settings.upper(id))
    }

    /// Checks the metastore's invariants (keys, child links, the id counter) and that
    /// every snapshot has its layer directory. Returns the number of snapshots.
    ///
    /// # Errors
    /// Unknown naming the first inconsistency.
    pub fn check(&self) -> Result<usize> {
        let n = self.store.read(|tx| tx.check())?;
        let ids = self.store.read(|tx| tx.id_map())?;
        for (id, key) in ids {
            let fs = self.settings.upper(id);
            if !fs.is_dir() {
                return Err(Error::unknown(format!(
                    "snapshot {key_m:?} (id {id}): layer directory {} is missing",
                    fs.display(),
                    key_m = snapshot_core::keyspace::truncate_for_message(&key)
                )));
            }
        }
        Ok(n)
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        let (id, info) = self.store.read(|tx| tx.id_and_info(key))?;
        Ok(self.with_upper_label(id, info))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        // The synthesised label is never stored, even when a caller sends it back.
        let mut info = info.clone();
        if self.config.upperdir_label {
            info.labels.remove(UPPERDIR_LABEL);
        }
        let (id, new) = self.store.write(|tx| {
            let new = tx.update_info(&info, fieldpaths)?;
            Ok((tx.snapshot(&new.name)?.id, new))
        })?;
        Ok(self.with_upper_label(id, new))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let (s, stored) = self
            .store
            .read(|tx| Ok((tx.snapshot(key)?, tx.stored_usage(key)?.1)))?;
        if s.kind == Kind::Active {
            return disk_usage(&self.settings.upper(s.id));
        }
        Ok(stored)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (s, volatile) = self.store.read(|tx| {
            let s = tx.snapshot(key)?;
            // Only an active overlay can be volatile: skip the label read otherwise.
            let volatile = self.features.volatile
                && s.kind == Kind::Active
                && !s.parent_ids.is_empty()
                && self.volatile(s.kind, &tx.info(key)?.labels);
            Ok((s, volatile))
        })?;
        if s.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "requested snapshot {key_m:?} not active or view: mount an active or view \
                 snapshot made on it instead",
                key_m = snapshot_core::keyspace::truncate_for_message(key)
            )));
        }
        Ok(build_mounts(
            &self.settings,
            s.kind,
            s.id,
            &s.parent_ids,
            volatile,
        ))
    }

    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, opts)
    }

    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, opts)
    }

    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        // The usage walk happens before the write transaction so that a large layer does
        // not block every other writer. When the name is taken or the key is missing or
        // not active, commit_active reports it, in containerd's order.
        let pre = self.store.read(|tx| {
            if tx.snapshot(name).is_ok() {
                return Ok(None);
            }
            Ok(tx.snapshot(key).ok().filter(|s| s.kind == Kind::Active))
        })?;
        let usage = match &pre {
            Some(s) => {
                let upper = self.settings.upper(s.id);
                if self.config.sync {
                    snapshot_core::layout::sync_filesystem(&upper)?;
                }
                disk_usage(&upper)?
            }
            None => Usage::default(),
        };
        self.store.write(|tx| {
            let id = tx.commit_active(key, name, usage, opts)?;
            match &pre {
                Some(s) if s.id == id => Ok(()),
                _ => Err(Error::unavailable(format!(
                    "snapshot {key_m:?} was removed and prepared again during its commit: \
                     commit it again",
                    key_m = snapshot_core::keyspace::truncate_for_message(key)
                ))),
            }
        })
    }

    fn remove(&self, key: &str) -> Result<()> {
        // Asynchronous mode leaves `rm-<id>` to cleanup, so Remove never walks the tree.
        self.layout
            .remove_snapshot(&self.store, key, !self.config.async_remove)
            .map(drop)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        if !self.config.upperdir_label {
            return self.store.walk(filters, f);
        }
        self.store.walk(filters, |info| {
            // The id is not in Info; a snapshot removed since the batch was read is skipped.
            match self.store.read(|tx| tx.snapshot(&info.name)) {
                Ok(s) => f(&self.with_upper_label(s.id, info.clone())),
                Err(e) if e.is(snapshot_core::ErrorKind::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn close(&self) -> Result<()> {
        self.store.close()?;
        self.layout.unlock();
        Ok(())
    }

    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(self)
    }
}

impl Cleaner for OverlaySnapshotter {
    fn cleanup(&self) -> Result<()> {
        self.sweep()?;
        self.layout.purge().map(drop)
    }
}

impl OverlaySnapshotter {
    fn with_upper_label(&self, id: u64, mut info: Info) -> Info {
        if self.config.upperdir_label {
            info.labels.insert(
                UPPERDIR_LABEL.to_string(),
                self.settings.upper(id).to_string_lossy().into(),
            );
        }
        info
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> Result<Vec<Mount>> {
        let mut staging = self.layout.stage()?;
        let fs = staging.path().join("fs");
        make_dir(&fs, 0o755)?;
        if kind == Kind::Active {
            make_dir(&staging.path().join("work"), 0o711)?;
        }
        // A failed transaction must take the published directory away.
        let mut published: Option<u64> = None;
        let res = self.store.write(|tx| {
            let s = tx.create(kind, key, parent, &opts.labels)?;
            if let Some(&pid) = s.parent_ids.first() {
                inherit_owner(&self.settings.upper(pid), &fs)?;
            }
            self.publish(&mut staging, s.id)?;
            published = Some(s.id);
            Ok(s)
        });
        match res {
            Ok(s) => Ok(build_mounts(
                &self.settings,
                kind,
                s.id,
                &s.parent_ids,
                self.volatile(kind, &opts.labels),
            )),
            Err(e) => {
                if let Some(id) = published {
                    self.layout.unpublish(id);
                }
                Err(e)
            }
        }
    }

    fn publish(&self, staging: &mut Staging, id: u64) -> Result<()> {
        self.layout.publish(staging, id).map(drop)
    }

    fn volatile(&self, kind: Kind, labels: &snapshot_core::Labels) -> bool {
        let asked = labels.get(VOLATILE_LABEL).is_some_and(|v| v != "false");
        if asked && !self.features.volatile {
            log::debug!("{VOLATILE_LABEL} ignored: this kernel has no volatile overlay option");
        }
        asked && self.features.volatile && kind == Kind::Active
    }

    /// Inside one write transaction: renames back the directories of snapshots whose
    /// remove was killed before its commit, then retires every directory the store does
    /// not know. Deleting is left to the caller, outside the transaction.
    fn sweep(&self) -> Result<usize> {
        self.store.write(|tx| self.layout.retire_orphans(tx))
    }
}

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

/// Gives `fs` the owner of the parent's layer, as containerd does: the overlay's root
/// takes the upper directory's owner, so without this a container on an image whose root
/// belongs to a user would see root's ownership instead.
fn inherit_owner(parent_fs: &Path, fs: &Path) -> Result<()> {
    let meta = std::fs::metadata(parent_fs).map_err(|source| OverlayError::StatParent {
        path: parent_fs.to_path_buf(),
        source,
    })?;
    let set = |source| OverlayError::SetOwner {
        path: fs.to_path_buf(),
        source,
    };
    let cur = std::fs::symlink_metadata(fs).map_err(set)?;
    if (cur.uid(), cur.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(fs, Some(meta.uid()), Some(meta.gid())).map_err(set)?;
    }
    Ok(())
}
