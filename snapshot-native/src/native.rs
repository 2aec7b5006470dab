//! The native snapshotter: every snapshot is a plain directory, and a snapshot on a parent
//! starts as a copy of the parent's directory.

use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use snapshot_core::keyspace::truncate_for_message;
use snapshot_core::layout::Layout;
use snapshot_core::metastore::{MetaStore, Reader, Snapshot, StoreOptions};
use snapshot_core::usage::disk_usage;
use snapshot_core::{
    Cleaner, CommitOptions, CreateOptions, Error, ErrorKind, Info, Kind, Mount, Result,
    Snapshotter, Usage,
};

use crate::copy::copy_tree;
use crate::error::NativeError;

/// How often a create or commit starts over when another call changed the snapshot it
/// works on between its preparation (the copy, the usage walk) and its transaction.
const ATTEMPTS: usize = 3;

/// Options of [`NativeSnapshotter::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeConfig {
    /// Skip the metastore's fsync at each transaction (containerd's `no_sync`): faster,
    /// but a power loss can lose the latest operations. A process crash loses nothing.
    pub no_sync: bool,
    /// Flush the filesystem holding an active snapshot (`syncfs`) before its commit is
    /// recorded, so a committed layer's data survives a power loss.
    pub sync: bool,
}

/// A snapshotter that copies: works on any filesystem, shares file data with reflinks
/// where the filesystem has them.
///
/// Layout under the root (see [`snapshot_core::layout`]):
/// `metadata/` (the LMDB metastore) and `snapshots/<id>/`, one directory per active
/// snapshot, committed snapshot or parentless view. The directory itself is the source of
/// the snapshot's bind mount, so its mode (0755 for a parentless snapshot) is the mode of
/// the mount's root.
///
/// - Prepare with a parent copies the parent's directory (see [`crate::copy`]);
/// - View of a parent copies nothing: its mount is a read-only bind of the parent;
/// - Commit records the snapshot as committed in place (same id, same directory);
/// - Remove deletes the metadata, then the directory.
///
/// Mounts are containerd native's: `{kind: "bind", source: <dir>, options: ["rbind",
/// "rw" | "ro"]}`.
pub struct NativeSnapshotter {
    layout: Layout,
    store: MetaStore,
    config: NativeConfig,
}

impl NativeSnapshotter {
    /// Opens (or creates) a native snapshotter at `root` and removes what a crash left
    /// behind: directories without metadata and half-built snapshots.
    ///
    /// A relative `root` is made absolute against the current directory, so the mount
    /// sources it hands out stay valid wherever the caller mounts them.
    ///
    /// # Errors
    /// InvalidArgument when `root` is not valid UTF-8 (mount sources are strings);
    /// Unavailable when another snapshotter, in this process or another, holds the root
    /// (its lock names the holder); Unknown when the
    /// directories or the metastore cannot be created.
    pub fn open(root: &Path, config: NativeConfig) -> Result<NativeSnapshotter> {
        let root = std::path::absolute(root).map_err(|e| Error::io("resolve root", root, e))?;
        if root.to_str().is_none() {
            return Err(Error::invalid_argument(format!(
                "snapshotter root {} is not valid UTF-8: pick a root whose path is",
                root.display()
            )));
        }
        let mut layout = Layout::new(&root)?;
        layout.set_no_sync(config.no_sync);
        let store = MetaStore::open(
            &layout.metadata_dir(),
            &StoreOptions {
                no_sync: config.no_sync,
                ..StoreOptions::default()
            },
        )?;
        let sn = NativeSnapshotter {
            layout,
            store,
            config,
        };
        sn.store.write(|tx| sn.layout.retire_orphans(tx))?;
        // Leftovers that cannot be deleted now must not keep the store from opening;
        // cleanup tries again.
        if let Err(e) = sn.layout.purge() {
            log::warn!(
                "native snapshotter {}: deleting leftovers: {e}",
                root.display()
            );
        }
        Ok(sn)
    }

    /// The snapshotter's root directory (absolute).
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &NativeConfig {
        &self.config
    }
}

impl Snapshotter for NativeSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.store.read(|tx| tx.info(key))
    }

    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.store.write(|tx| tx.update_info(info, fieldpaths))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let (snapshot, stored) = self
            .store
            .read(|tx| Ok((tx.snapshot(key)?, tx.stored_usage(key)?.1)))?;
        if snapshot.kind != Kind::Active {
            return Ok(stored);
        }
        match disk_usage(&self.layout.snapshot_dir(snapshot.id)) {
            // Removed since the lookup.
            Err(e) if e.is(ErrorKind::NotFound) => Err(Error::not_found(format!(
                "snapshot {:?}",
                truncate_for_message(key)
            ))),
            other => other,
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let snapshot = self.store.read(|tx| tx.snapshot(key))?;
        if snapshot.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {:?} is committed: only active and view snapshots have mounts",
                truncate_for_message(key)
            )));
        }
        Ok(mounts_for(self.layout.snapshots_dir(), &snapshot))
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
            return Err(Error::cannot_rebase("native", key, &opts.parent));
        }
        for _ in 0..ATTEMPTS {
            // The usage walk runs outside the write transaction (it can take long on a
            // big layer and would block every other writer). It is skipped when the
            // commit is bound to fail; the transaction then reports why.
            let active = self.store.read(|tx| {
                let name_taken = tx.snapshot(name).is_ok();
                Ok(active_id(tx, key).filter(|_| !name_taken))
            })?;
            let usage = match active {
                Some(id) => self.layer_usage(id)?,
                None => Usage::default(),
            };
            let mut changed = false;
            let res = self.store.write(|tx| {
                if active.is_some() && active_id(tx, key) != active {
                    changed = true;
                    return Err(changed_error(key));
                }
                tx.commit_active(key, name, usage, opts).map(drop)
            });
            if !changed {
                return res;
            }
        }
        Err(changed_error(key))
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.layout
            .remove_snapshot(&self.store, key, true)
            .map(drop)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.store.walk(filters, f)
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

impl Cleaner for NativeSnapshotter {
    fn cleanup(&self) -> Result<()> {
        // Inside a write transaction no create sits between publishing its directory and
        // committing its metadata, so every directory without metadata is an orphan.
        self.store.write(|tx| self.layout.retire_orphans(tx))?;
        self.layout.purge().map(drop)
    }
}

impl NativeSnapshotter {
    /// Prepare and View. The directory is built under a staging name outside any
    /// transaction (the copy of a parent can take long), then published as
    /// `snapshots/<id>` inside the transaction that records it.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> Result<Vec<Mount>> {
        let needs_dir = kind == Kind::Active || parent.is_empty();
        for _ in 0..ATTEMPTS {
            // Copy only when the create can succeed; when it cannot, the transaction
            // reports why, with containerd's order of checks.
            let copy_from = if kind == Kind::Active && !parent.is_empty() {
                self.store.read(|tx| {
                    let free = matches!(tx.snapshot(key), Err(e) if e.is(ErrorKind::NotFound));
                    Ok(match tx.snapshot(parent) {
                        Ok(p) if p.kind == Kind::Committed && free => Some(p.id),
                        _ => None,
                    })
                })?
            } else {
                // Fails early when the store is closed, before any directory is made.
                self.store.read(|_| Ok(None))?
            };
            let mut staging = match needs_dir {
                true => Some(self.layout.stage()?),
                false => None,
            };
            if let Some(staging) = &staging {
                let dir = staging.path();
                // The root of the mount: 0755 as containerd's, unless a parent's root
                // mode is copied over it.
                chmod(dir, 0o755).map_err(|e| NativeError::io("chmod", dir, e))?;
                if let Some(pid) = copy_from {
                    copy_tree(&self.layout.snapshot_dir(pid), dir)?;
                }
            }
            let mut published: Option<u64> = None;
            let mut changed = false;
            let res = self.store.write(|tx| {
                let snapshot = tx.create(kind, key, parent, &opts.labels)?;
                let Some(staging) = staging.as_mut() else {
                    return Ok(snapshot);
                };
                if kind == Kind::Active && snapshot.parent_ids.first().copied() != copy_from {
                    // The parent was replaced (or the key freed) since the copy began.
                    changed = true;
                    return Err(changed_error(key));
                }
                self.layout.publish(staging, snapshot.id)?;
                published = Some(snapshot.id);
                Ok(snapshot)
            });
            match res {
                Ok(snapshot) => return Ok(mounts_for(self.layout.snapshots_dir(), &snapshot)),
                Err(e) => {
                    if let Some(id) = published {
                        self.layout.unpublish(id);
                    }
                    if !changed {
                        return Err(e);
                    }
                }
            }
        }
        Err(changed_error(key))
    }

    /// The usage of an active snapshot's directory, after flushing it when configured.
    fn layer_usage(&self, id: u64) -> Result<Usage> {
        let dir = self.layout.snapshot_dir(id);
        if self.config.sync {
            snapshot_core::layout::sync_filesystem(&dir)?;
        }
        disk_usage(&dir)
    }
}

/// The mounts of an active or view snapshot, as containerd's native snapshotter builds
/// them: a bind of the snapshot's own directory, or for a view of a parent, a read-only
/// bind of the immediate parent's directory.
fn mounts_for(snapshots_dir: &Path, snapshot: &Snapshot) -> Vec<Mount> {
    let (mode, dir) = match (snapshot.kind, snapshot.parent_ids.first()) {
        (Kind::View, Some(&parent)) => ("ro", parent),
        (Kind::View, None) => ("ro", snapshot.id),
        _ => ("rw", snapshot.id),
    };
    let source: PathBuf = snapshots_dir.join(dir.to_string());
    // The root is checked to be UTF-8 at open, and the rest is digits.
    let source = source
        .to_str()
        .expect("snapshot paths are UTF-8")
        .to_string();
    vec![Mount::new(
        "bind",
        source,
        vec!["rbind".to_string(), mode.to_string()],
    )]
}

/// The id of `key` if it is an active snapshot.
fn active_id(tx: &impl Reader, key: &str) -> Option<u64> {
    tx.snapshot(key)
        .ok()
        .filter(|s| s.kind == Kind::Active)
        .map(|s| s.id)
}

fn changed_error(key: &str) -> Error {
    Error::unavailable(format!(
        "snapshot {:?}: its parent or key changed {ATTEMPTS} times while it was being built: \
         retry the call",
        truncate_for_message(key)
    ))
}

/// `chmod(path, mode)`, ignoring the umask.
fn chmod(path: &Path, mode: u32) -> rustix::io::Result<()> {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_containerd_native() {
        let dir = Path::new("/r/snapshots");
        let snap = |id, kind, parent_ids: &[u64]| Snapshot {
            id,
            kind,
            parent_ids: parent_ids.to_vec(),
        };
        let cases: &[(Snapshot, &str, &str)] = &[
            (snap(1, Kind::Active, &[]), "/r/snapshots/1", "rw"),
            (snap(3, Kind::Active, &[2, 1]), "/r/snapshots/3", "rw"),
            (snap(4, Kind::View, &[]), "/r/snapshots/4", "ro"),
            (snap(5, Kind::View, &[2, 1]), "/r/snapshots/2", "ro"),
            (snap(6, Kind::View, &[7]), "/r/snapshots/7", "ro"),
        ];
        for (s, source, mode) in cases {
            let m = mounts_for(dir, s);
            assert_eq!(
                m,
                vec![Mount::new(
                    "bind",
                    *source,
                    vec!["rbind".into(), mode.to_string()]
                )],
                "{s:?}"
            );
        }
    }
}
