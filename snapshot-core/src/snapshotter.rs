//! The [`Snapshotter`] and [`Cleaner`] traits.

use crate::error::Result;
use crate::types::{CommitOptions, CreateOptions, Info, Mount, Usage};

/// A snapshotter: stores layered filesystem snapshots and hands out mounts of them.
///
/// # The model
///
/// A *snapshot* is a filesystem tree. It is either
/// - **Active**: writable, made by [`prepare`](Self::prepare), named by a *key*;
/// - **View**: read-only, made by [`view`](Self::view), named by a *key*;
/// - **Committed**: immutable, made by [`commit`](Self::commit) of an active snapshot,
///   named by a *name*. Only committed snapshots can be *parents*.
///
/// Keys, names and parents share **one keyspace**: a key used by an active snapshot
/// cannot name a view or a committed snapshot at the same time. A snapshot made on a
/// parent starts with the parent's content; what it changes never shows in the parent.
///
/// # The lifecycle
///
/// ```text
///            prepare(key, parent)            commit(name, key)
///   (none) ────────────────────▶ Active ───────────────────────▶ Committed
///            view(key, parent)                                       │
///   (none) ────────────────────▶ View        (a parent of new ◀──────┘
///                                             active and view snapshots)
/// ```
///
/// Active and view snapshots never become committed ones in place, and committed ones
/// never become writable: `commit` makes a new committed snapshot from the active one and
/// frees the key at once. [`remove`](Self::remove) deletes any snapshot that has no
/// children. [`mounts`](Self::mounts) returns what `prepare` or `view` returned, for as
/// long as the snapshot exists. Mounts have no target: the caller mounts them where it
/// wants (see [`crate::mount::mount_all`]).
///
/// # Examples
///
/// Importing a layer: prepare a snapshot without parent, mount it, unpack into it,
/// commit it under the layer's name.
///
/// ```no_run
/// use snapshot_core::{Snapshotter, CreateOptions, CommitOptions, Result};
/// use snapshot_core::mount::{mount_all, unmount_all};
/// use std::path::Path;
///
/// fn import_layer(sn: &dyn Snapshotter, layer: &str, target: &Path) -> Result<()> {
///     let key = format!("extract-{layer}");
///     let mounts = sn.prepare(&key, "", &CreateOptions::default())?;
///     mount_all(&mounts, target)?;
///     std::fs::write(target.join("hello"), b"from the first layer").unwrap();
///     unmount_all(target)?;
///     sn.commit(layer, &key, &CommitOptions::default())
/// }
/// ```
///
/// The next layer: prepare on the committed parent, apply the diff, commit.
///
/// ```no_run
/// use snapshot_core::{Snapshotter, CreateOptions, CommitOptions, Result};
/// use snapshot_core::mount::{mount_all, unmount_all};
/// use std::path::Path;
///
/// fn next_layer(sn: &dyn Snapshotter, parent: &str, layer: &str, target: &Path) -> Result<()> {
///     let key = format!("extract-{layer}");
///     let mounts = sn.prepare(&key, parent, &CreateOptions::default())?;
///     mount_all(&mounts, target)?;
///     std::fs::remove_file(target.join("hello")).unwrap(); // the parent keeps its copy
///     unmount_all(target)?;
///     sn.commit(layer, &key, &CommitOptions::default())
/// }
/// ```
///
/// Running a container: prepare a writable snapshot on the image's top layer, mount it
/// as the root filesystem, remove it when the container is gone. A read-only view serves
/// tools that only inspect the image.
///
/// ```no_run
/// use snapshot_core::{Snapshotter, CreateOptions, Kind, Result};
///
/// fn run_container(sn: &dyn Snapshotter, image_top: &str, id: &str) -> Result<()> {
///     let mounts = sn.prepare(id, image_top, &CreateOptions::default())?;
///     assert_eq!(sn.stat(id)?.kind, Kind::Active);
///     assert_eq!(sn.mounts(id)?, mounts);
///     // ... mount, run, unmount ...
///     let _ro = sn.view(&format!("{id}-inspect"), image_top, &CreateOptions::default())?;
///     sn.remove(&format!("{id}-inspect"))?;
///     sn.remove(id)
/// }
/// ```
///
/// # Errors
///
/// Every method returns [`crate::Error`] with one of containerd's kinds; each method
/// lists its own. A closed snapshotter returns Unavailable from every method but `close`.
pub trait Snapshotter: Send + Sync {
    /// The info of the snapshot `key` (a key or a committed name): kind, name, parent
    /// (empty for a root), labels, created and updated times.
    ///
    /// # Errors
    /// NotFound when no snapshot has that key.
    fn stat(&self, key: &str) -> Result<Info>;

    /// Updates the labels of the snapshot `info.name` and returns its new info.
    ///
    /// With no field paths, or the path `labels`, the labels become `info.labels`. The
    /// path `labels.<k>` sets just that label from `info.labels`; an absent or empty
    /// value deletes it. Name, kind, parent and created never change; updated does.
    ///
    /// # Errors
    /// NotFound for a missing snapshot; InvalidArgument for any other field path, or a
    /// label whose key and value exceed 4096 bytes.
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info>;

    /// Disk usage of the snapshot's own layer (not its parents). Computed live for active
    /// snapshots; for committed ones, the figure stored at commit.
    ///
    /// # Errors
    /// NotFound for a missing snapshot.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// The mounts of an active or view snapshot: what `prepare` or `view` returned.
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition for a committed snapshot.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Creates an active (writable) snapshot `key` on the committed snapshot `parent`
    /// (empty for none) and returns its mounts.
    ///
    /// # Errors
    /// InvalidArgument for an empty key, a key or parent holding NUL, oversized labels,
    /// or a parent that is not committed; NotFound for a missing parent; AlreadyExists
    /// when `key` is taken by any snapshot.
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>>;

    /// Creates a read-only view `key` of the committed snapshot `parent` and returns its
    /// mounts. Writes through them fail.
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare).
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>>;

    /// Commits the active snapshot `key` as the committed snapshot `name`. The committed
    /// snapshot keeps the parent, takes `opts.labels` (not the active's labels) and fresh
    /// times, and stores its usage. `key` is free for reuse at once.
    ///
    /// # Errors
    /// AlreadyExists when `name` exists (checked first); NotFound for a missing key;
    /// FailedPrecondition when `key` is not active (a view); InvalidArgument for a bad
    /// name or a rebase (`opts.parent`) onto a different parent.
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()>;

    /// Removes the snapshot `key` of any kind. Backends that defer deletion drop the
    /// metadata now and the files in [`Cleaner::cleanup`].
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition when it has children.
    fn remove(&self, key: &str) -> Result<()>;

    /// Calls `f` with the info of every snapshot that matches `filters` (containerd filter
    /// strings; several strings are OR, `,` inside one is AND; none matches all). `f` may
    /// call [`stat`](Self::stat) on the same snapshotter. An error from `f` stops the walk
    /// and is returned.
    ///
    /// # Errors
    /// InvalidArgument for a filter that does not parse; whatever `f` returns.
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()>;

    /// Releases the snapshotter's resources. Calling it twice is fine; other calls after
    /// it return Unavailable.
    ///
    /// # Errors
    /// Unknown when flushing the metastore fails.
    fn close(&self) -> Result<()>;

    /// The backend's [`Cleaner`], if it defers deletion.
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        None
    }

    /// Whether [`mounts`](Self::mounts) is one read transaction and a computation, never
    /// waiting for a writer nor touching the filesystem, so a server may run it on its
    /// event loop (default: no).
    fn mounts_never_block(&self) -> bool {
        false
    }
}

/// Backends that defer work (asynchronous remove, orphans from a crash) implement
/// `cleanup` to finish it. containerd's garbage collector calls it after removals.
pub trait Cleaner {
    /// Deletes the directories of removed snapshots and any orphan left by a crash.
    ///
    /// # Errors
    /// Unknown for I/O failures; a failure on one directory does not stop the others.
    fn cleanup(&self) -> Result<()>;

    /// Audits the store: cross-checks its records, its directories and the live mounts,
    /// and with `repair` deletes what is provably safe to delete
    /// ([`crate::fsck`] lists what is found and what is repaired). Default:
    /// NotImplemented.
    ///
    /// # Errors
    /// NotImplemented for a store that cannot audit itself; Unknown when what it reads
    /// cannot be read.
    fn fsck(&self, repair: bool) -> Result<crate::fsck::FsckReport> {
        let _ = repair;
        Err(crate::Error::not_implemented(
            "this snapshotter cannot audit itself (fsck)",
        ))
    }
}

impl<T: Snapshotter + ?Sized> Snapshotter for Box<T> {
    fn stat(&self, key: &str) -> Result<Info> {
        (**self).stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        (**self).update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        (**self).usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        (**self).mounts(key)
    }
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        (**self).prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        (**self).view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        (**self).commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        (**self).remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        (**self).walk(filters, f)
    }
    fn close(&self) -> Result<()> {
        (**self).close()
    }
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        (**self).as_cleaner()
    }
    fn mounts_never_block(&self) -> bool {
        (**self).mounts_never_block()
    }
}
