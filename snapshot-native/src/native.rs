//! The native snapshotter: every snapshot is a plain directory, and a snapshot on a parent
//! starts as a copy of the parent's directory.

use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use snapshot_core::lifecycle::{Options, SnapshotStore, Storage};
use snapshot_core::metastore::Snapshot;
use snapshot_core::{Kind, Labels, Mount, Result};

use crate::copy::copy_tree;
use crate::error::NativeError;

/// Options of [`NativeSnapshotter::open`]: the options every backend takes.
pub type NativeConfig = Options;

/// A snapshotter that copies: works on any filesystem, shares file data with reflinks
/// where the filesystem has them.
///
/// Layout under the root (see [`snapshot_core::lifecycle`]):
/// `metadata/` (the LMDB metastore) and `snapshots/<id>/`, one directory per active
/// snapshot, committed snapshot or parentless view. The directory itself is the source of
/// the snapshot's bind mount, so its mode (0755 for a parentless snapshot) is the mode of
/// the mount's root.
///
/// - Prepare with a parent copies the parent's directory (see [`crate::copy`]);
/// - View of a parent copies nothing: its mount is a read-only bind of the parent;
/// - Commit records the snapshot as committed in place (same id, same directory);
/// - Remove deletes the metadata, then the directory (before it returns, unless
///   [`Options::async_remove`] says otherwise).
///
/// Mounts are containerd native's: `{kind: "bind", source: <dir>, options: ["rbind",
/// "rw" | "ro"]}`. The crash-safe order of every step is the shared one of
/// [`SnapshotStore`].
#[derive(Debug)]
pub struct NativeSnapshotter {
    inner: SnapshotStore<NativeStorage>,
    config: NativeConfig,
}

/// The native backend's [`Storage`]: directories, copied from the parent.
#[derive(Debug)]
pub struct NativeStorage {
    snapshots: PathBuf,
}

impl Storage for NativeStorage {
    const NAME: &'static str = "native";
    const PURE_MOUNTS: bool = true;

    fn has_tree(&self, kind: Kind, has_parent: bool) -> bool {
        // A view of a parent mounts the parent's directory read-only; everything else
        // (a committed layer keeps its active tree) has one.
        !(kind == Kind::View && has_parent)
    }

    fn fill(&self, dst: &Path, kind: Kind, parent: Option<&Path>, _labels: &Labels) -> Result<()> {
        std::fs::create_dir(dst).map_err(|e| NativeError::io("create directory", dst, e))?;
        // The root of the mount: 0755 as containerd's, unless a parent's root mode is
        // copied over it.
        rustix::fs::chmod(dst, Mode::from_raw_mode(0o755))
            .map_err(|e| NativeError::io("chmod", dst, std::io::Error::from(e)))?;
        if let (Kind::Active, Some(parent)) = (kind, parent) {
            copy_tree(parent, dst)?;
        }
        Ok(())
    }

    fn sync_published(&self, tree: &Path) -> Result<()> {
        // A copy of a parent is new data, not only names: the directory fsync makes its
        // entries durable, not the files' contents, so a tree with content is flushed
        // whole first (one syncfs is cheaper than an fsync per copied file).
        let has_content = std::fs::read_dir(tree)
            .map_err(|e| NativeError::io("read directory", tree, e))?
            .next()
            .is_some();
        if has_content {
            snapshot_core::layout::sync_filesystem(tree)?;
        }
        snapshot_core::layout::fsync_dir(tree)
    }

    fn mounts(
        &self,
        snapshot: &Snapshot,
        _tree: &Path,
        _labels: Option<&Labels>,
    ) -> Result<Vec<Mount>> {
        Ok(mounts_for(&self.snapshots, snapshot))
    }
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
    /// (its lock names the holder); Unknown when the directories or the metastore cannot
    /// be created.
    pub fn open(root: &Path, config: NativeConfig) -> Result<NativeSnapshotter> {
        let root = snapshot_core::lifecycle::prepare_root(root)?;
        let storage = NativeStorage {
            snapshots: root.join("snapshots"),
        };
        Ok(NativeSnapshotter {
            inner: SnapshotStore::open(&root, storage, &config)?,
            config,
        })
    }

    /// The snapshotter's root directory (absolute).
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &NativeConfig {
        &self.config
    }

    /// The shared lifecycle under this backend (checks, sweeps).
    pub fn store(&self) -> &SnapshotStore<NativeStorage> {
        &self.inner
    }
}

snapshot_core::delegate_snapshotter!(NativeSnapshotter, inner);

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
