//! The on-disk layout shared by directory-based backends, and the crash-safe steps on it.
//!
//! ```text
//! <root>/metadata/          the LMDB metastore
//! <root>/snapshots/<id>/    one directory per snapshot, named by internal id
//! <root>/snapshots/new-*    a snapshot being built (staging)
//! <root>/snapshots/rm-<id>  a removed snapshot waiting for deletion
//! ```
//!
//! The order of operations (DESIGN.md section 5):
//! - create: [`Layout::stage`] a directory, fill it, then in the write transaction record
//!   the snapshot and [`Layout::publish`] the staging directory as `<id>` (no replace); the
//!   transaction commits after. An error anywhere drops the [`Staging`], which deletes it.
//! - remove: in the write transaction delete the record and [`Layout::retire`] `<id>` to
//!   `rm-<id>`; after the commit, [`Layout::purge`] (synchronous) or leave it to cleanup.
//!   If the transaction fails, [`Layout::restore`] renames it back.
//! - open and cleanup: [`Layout::retire_orphans`] inside a write transaction (so no create
//!   is between its rename and its commit), then [`Layout::purge`] outside it.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::error::{Error, Result};
use crate::metastore::{MetaStore, Reader, WriteTxn};
use crate::types::Kind;

const STAGING_PREFIX: &str = "new-";
const RETIRED_PREFIX: &str = "rm-";

/// The directories of one snapshotter root.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    snapshots: PathBuf,
    staging: Arc<Mutex<HashSet<String>>>,
    counter: AtomicU64,
    // Removes hold the read side from their retire until the commit (or the restore);
    // purge lists the retired directories under the write side, so it never deletes an
    // `rm-<id>` that a failed remove is about to rename back.
    removing: RwLock<()>,
    lock: Mutex<Option<RootLock>>,
    durable: bool,
}

/// An exclusive lock on a snapshotter root (`flock` on `<root>/lock`, which holds the
/// owner's pid), held while a process owns the root: two processes working on one root
/// would sweep each other's staging directories and hand out the same ids.
#[derive(Debug)]
pub struct RootLock {
    _file: std::fs::File,
}

impl RootLock {
    /// Takes the lock of `root` (an existing directory) without waiting.
    ///
    /// # Errors
    /// Unavailable naming the root and, where the lock file tells, the holder's pid, when
    /// another open snapshotter (in this process or another) holds it; Unknown when the
    /// lock file cannot be opened or written.
    pub fn acquire(root: &Path) -> Result<RootLock> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) if pid == std::process::id() => {
                        format!("this process (pid {pid}) has it open already")
                    }
                    Ok(pid) => format!("process {pid} holds it"),
                    Err(_) => "another process holds it".to_string(),
                };
                return Err(Error::unavailable(format!(
                    "snapshotter root {} is in use: {holder} (lock {}): stop or close that \
                     snapshotter first, or use another root",
                    root.display(),
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io("lock", &path, e.into())),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io("write lock file", &path, e))?;
        Ok(RootLock { _file: file })
    }
}

/// A staging directory owned by a running create. Dropping it deletes the directory
/// unless it was published.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    name: String,
    published: bool,
    owners: Arc<Mutex<HashSet<String>>>,
}

impl Staging {
    /// The staging directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            if let Err(e) = remove_tree(&self.path) {
                log::warn!("removing staging directory {}: {e}", self.path.display());
            }
        }
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

impl Layout {
    /// The layout under `root`, creating `root` and `root/snapshots` (mode 0700) as needed
    /// and taking the root's [`RootLock`] until [`unlock`](Self::unlock) or drop.
    ///
    /// # Errors
    /// Unavailable when another snapshotter holds the root; Unknown when the directories
    /// cannot be created.
    pub fn new(root: &Path) -> Result<Layout> {
        let snapshots = root.join("snapshots");
        create_private_dir(root)?;
        let lock = RootLock::acquire(root)?;
        create_private_dir(&snapshots)?;
        Ok(Layout {
            lock: Mutex::new(Some(lock)),
            durable: true,
            root: root.to_path_buf(),
            snapshots,
            staging: Arc::default(),
            counter: AtomicU64::new(0),
            removing: RwLock::new(()),
        })
    }

    /// Skips the directory fsync that makes a publish durable (with the metastore's
    /// `no_sync`, which gives up durability across a power loss anyway).
    pub fn set_no_sync(&mut self, no_sync: bool) {
        self.durable = !no_sync;
    }

    /// Releases the root's lock (at close), so another snapshotter may open the root.
    pub fn unlock(&self) {
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The snapshotter root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the metastore lives: `<root>/metadata`.
    pub fn metadata_dir(&self) -> PathBuf {
        self.root.join("metadata")
    }

    /// `<root>/snapshots`, the parent of every snapshot directory.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    /// `<root>/snapshots/<id>`.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// Creates a fresh staging directory `snapshots/new-*` (mode 0700) owned by the caller.
    ///
    /// # Errors
    /// Unknown when it cannot be created.
    pub fn stage(&self) -> Result<Staging> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{STAGING_PREFIX}{}-{n}", std::process::id());
        let path = self.snapshots.join(&name);
        self.staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        let staging = Staging {
            path: path.clone(),
            name,
            published: false,
            owners: self.staging.clone(),
        };
        create_private_dir(&path)?;
        Ok(staging)
    }

    /// Renames the staging directory to `snapshots/<id>`, refusing to replace anything.
    ///
    /// # Errors
    /// AlreadyExists-free by design: a leftover `<id>` (an orphan of a crash) is retired
    /// first; Unknown when the rename fails.
    pub fn publish(&self, staging: &mut Staging, id: u64) -> Result<PathBuf> {
        let dst = self.snapshot_dir(id);
        match rename_noreplace(&staging.path, &dst) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // An id handed out before a crash that never committed: its directory is
                // an orphan that a sweep has not reached yet.
                log::warn!("retiring orphan {} left by an earlier crash", dst.display());
                self.retire_as(&dst, &format!("orphan-{id}"))
                    .and_then(|()| rename_noreplace(&staging.path, &dst))
            }
            other => other,
        }
        .map_err(|e| Error::io("rename staging directory to", &dst, e))?;
        staging.published = true;
        // The metastore's commit makes the record durable, not this rename: without the
        // fsync a power cut can leave a record whose directory never reached the disk.
        // The published directory is the one synced: that makes its own entries (`fs`,
        // `work`) durable and, as it is new, its name in `snapshots/` too (btrfs logs a new
        // inode's link; ext4's and xfs's journals commit the rename before it).
        if self.durable {
            fsync_dir(&dst)?;
        }
        Ok(dst)
    }

    /// Undoes [`publish`](Self::publish) when the transaction did not commit: the
    /// directory is deleted (the staging guard no longer owns it).
    pub fn unpublish(&self, id: u64) {
        let dir = self.snapshot_dir(id);
        if let Err(e) = remove_tree(&dir) {
            log::warn!("removing {} after a failed commit: {e}", dir.display());
        }
    }

    /// `snapshots/rm-<id>`.
    pub fn retired_dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(format!("{RETIRED_PREFIX}{id}"))
    }

    /// Renames `snapshots/<id>` to `snapshots/rm-<id>`; a missing directory is fine.
    ///
    /// # Errors
    /// Unknown when the rename fails.
    pub fn retire(&self, id: u64) -> Result<()> {
        let src = self.snapshot_dir(id);
        match rename_noreplace(&src, &self.retired_dir(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| Error::io("retire snapshot directory", &src, e)),
        }
    }

    /// Renames `rm-<id>` back to `<id>` after a failed remove transaction.
    pub fn restore(&self, id: u64) {
        let src = self.retired_dir(id);
        if let Err(e) = rename_noreplace(&src, &self.snapshot_dir(id)) {
            if e.kind() != io::ErrorKind::NotFound {
                log::error!("restoring {} after a failed remove: {e}", src.display());
            }
        }
    }

    /// Repairs what a crash left under `snapshots/` and retires what nobody owns: an
    /// `rm-<id>` whose record is still live (a remove killed before its commit) is renamed
    /// back to `<id>`; every `<id>` that is not a live id and every staging directory no
    /// running create owns is retired. Run it inside a write transaction, so that no create
    /// sits between its publish and its commit and no remove between its retire and its
    /// commit. Returns how many directories it retired.
    ///
    /// # Errors
    /// Unknown when the directory cannot be read or a rename fails.
    pub fn retire_orphans(&self, txn: &WriteTxn<'_>) -> Result<usize> {
        let mut n = 0;
        let entries = std::fs::read_dir(&self.snapshots)
            .map_err(|e| Error::io("read directory", &self.snapshots, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &self.snapshots, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name
                .strip_prefix(RETIRED_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                if txn.has_id(id)? && !self.snapshot_dir(id).exists() {
                    log::warn!(
                        "restoring {} whose remove did not commit",
                        entry.path().display()
                    );
                    self.restore(id);
                }
                continue;
            }
            let orphan = if let Ok(id) = name.parse::<u64>() {
                !txn.has_id(id)?
            } else if name.starts_with(STAGING_PREFIX) {
                // Checked per entry, after the listing saw it: `stage` registers a name
                // before it creates the directory, so a create that started meanwhile is
                // never taken for an orphan.
                !self
                    .staging
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(name)
            } else {
                false
            };
            if orphan {
                let src = entry.path();
                log::info!("retiring orphan snapshot directory {}", src.display());
                match self.retire_as(&src, &format!("orphan-{name}")) {
                    Ok(()) => n += 1,
                    // A failed create dropped its staging directory meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("retire orphan", &src, e)),
                }
            }
        }
        Ok(n)
    }

    /// Removes the snapshot `key` in the crash-safe order: in one write transaction the
    /// record goes and `<id>` is retired to `rm-<id>`; if the transaction fails the
    /// directory is renamed back. With `purge_now` (synchronous remove) the retired
    /// directory is deleted after the commit; a failure there is only logged, since the
    /// snapshot is gone and the next purge retries. Returns the id and kind.
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition when it has children; Unknown when
    /// the rename or the commit fails.
    pub fn remove_snapshot(
        &self,
        store: &MetaStore,
        key: &str,
        purge_now: bool,
    ) -> Result<(u64, Kind)> {
        let guard = self.removing.read().unwrap_or_else(|e| e.into_inner());
        let mut retired: Option<u64> = None;
        let res = store.write(|tx| {
            let (id, kind) = tx.remove(key)?;
            self.retire(id)?;
            retired = Some(id);
            Ok((id, kind))
        });
        if res.is_err() {
            if let Some(id) = retired {
                self.restore(id);
            }
        }
        drop(guard);
        let (id, kind) = res?;
        if purge_now {
            if let Err(e) = self.purge_one(id) {
                log::warn!(
                    "removed snapshot {:?}, but not its directory (the next cleanup retries): {e}",
                    crate::keyspace::truncate_for_message(key)
                );
            }
        }
        Ok((id, kind))
    }

    /// Deletes every retired directory (`rm-*`). Returns how many were deleted; a failure
    /// on one is logged and the others still go, the first error is returned.
    ///
    /// # Errors
    /// Unknown for the first directory that could not be deleted.
    pub fn purge(&self) -> Result<usize> {
        let listing = self.removing.write().unwrap_or_else(|e| e.into_inner());
        let entries = std::fs::read_dir(&self.snapshots)
            .map_err(|e| Error::io("read directory", &self.snapshots, e))?;
        let dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(RETIRED_PREFIX))
            })
            .map(|e| e.path())
            .collect();
        drop(listing);
        let mut first = None;
        let mut n = 0;
        for d in &dirs {
            match remove_tree(d) {
                Ok(()) => n += 1,
                Err(e) => {
                    log::warn!("deleting {}: {e}", d.display());
                    first.get_or_insert(Error::io("delete", d, e));
                }
            }
        }
        first.map_or(Ok(n), Err)
    }

    /// Deletes one retired directory, `rm-<id>` (synchronous remove).
    ///
    /// # Errors
    /// Unknown when it cannot be deleted.
    pub fn purge_one(&self, id: u64) -> Result<()> {
        let d = self.retired_dir(id);
        remove_tree(&d).map_err(|e| Error::io("delete", &d, e))
    }

    /// Renames `src` to `rm-<stem>`, or to a fresh variant of that name when an older
    /// retired tree still holds it: a retired tree is never replaced or merged into.
    fn retire_as(&self, src: &Path, stem: &str) -> io::Result<()> {
        let mut dst = self.snapshots.join(format!("{RETIRED_PREFIX}{stem}"));
        loop {
            match rename_noreplace(src, &dst) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let n = self.counter.fetch_add(1, Ordering::Relaxed);
                    let pid = std::process::id();
                    dst = self
                        .snapshots
                        .join(format!("{RETIRED_PREFIX}{stem}-{pid}-{n}"));
                }
                r => return r,
            }
        }
    }
}

/// Deletes a tree; one that is already gone is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// `syncfs` on the filesystem holding `dir`: flushes a layer's data before its commit is
/// recorded (the backends' `sync` option).
///
/// # Errors
/// Unknown naming `dir` when it cannot be opened or flushed.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    rustix::fs::syncfs(open_dir(dir)?)
        .map_err(|e| Error::io("flush the filesystem of", dir, e.into()))
}

/// `fsync` of a directory: makes the renames and creations in it durable.
///
/// # Errors
/// Unknown naming `dir` when it cannot be opened or flushed.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    rustix::fs::fsync(open_dir(dir)?).map_err(|e| Error::io("fsync directory", dir, e.into()))
}

fn open_dir(dir: &Path) -> Result<std::os::fd::OwnedFd> {
    rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir, e.into()))
}

/// `renameat2(RENAME_NOREPLACE)`.
pub fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    renameat_with(CWD, src, CWD, dst, RenameFlags::NOREPLACE).map_err(Into::into)
}

fn create_private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(d)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io("create directory", d, e)),
    }
}
