//! The LMDB metastore every backend keeps its snapshot metadata in.
//!
//! One environment per snapshotter root, four databases:
//! - `snapshots`: internal id (`u64` big-endian) to the record (kind, times, stored usage,
//!   key, parent name, parent ids nearest first, labels);
//! - `keys`: `blake3(key)` to id, so keys of any length fit LMDB's key limit (the record
//!   holds the full key and every lookup checks it);
//! - `children`: `(parent id, child id)` to nothing, so "has children" is one range seek;
//! - `meta`: the id counter (persisted in the same write transaction) and the schema
//!   version.
//!
//! Transactions are explicit values: [`MetaStore::read`] hands a [`ReadTxn`] and
//! [`MetaStore::write`] a [`WriteTxn`] to a closure. The write transaction commits when
//! the closure returns `Ok` and aborts when it returns `Err`. The closure runs exactly
//! once: the store grows LMDB's map *before* a write transaction whenever less than half
//! of it is free, so a transaction does not run out of room half way. (One that still
//! does, a single transaction larger than half the map, is aborted with Unavailable after
//! the map has grown, and the caller retries.)
//!
//! A durable store (without `no_sync`) returns from [`MetaStore::write`] only once the
//! transaction is on the disk. Concurrent writers share the flush that puts it there
//! (group commit): each commit flushes its data pages under the writer lock, as LMDB
//! always does, and the meta page that makes it current is flushed after the lock is
//! released, once for every writer that committed meanwhile. A transaction is visible to
//! reads from its commit, up to one flush before its writer is told it is durable; a
//! writer that depends on it (a Prepare on a layer just committed) is acknowledged only
//! after a flush that covers both. A flush that fails stops the store (every call then
//! fails with Unavailable until it is reopened).
//!
//! ```
//! use snapshot_core::metastore::{MetaStore, Reader, StoreOptions};
//! use snapshot_core::{Kind, Labels, Usage, CommitOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = MetaStore::open(dir.path(), &StoreOptions::default()).unwrap();
//! let s = store.write(|tx| tx.create(Kind::Active, "a", "", &Labels::new())).unwrap();
//! assert_eq!(s.id, 1);
//! store.write(|tx| tx.commit_active("a", "base", Usage::default(), &CommitOptions::default())).unwrap();
//! let child = store.write(|tx| tx.create(Kind::Active, "b", "base", &Labels::new())).unwrap();
//! assert_eq!(child.parent_ids, vec![1]);
//! let info = store.read(|tx| tx.info("base")).unwrap();
//! assert_eq!(info.kind, Kind::Committed);
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::SystemTime;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use crate::error::{Error, ErrorKind, Result};
use crate::filter::FilterSet;
use crate::keyspace::{truncate_for_message, validate_key, validate_labels};
use crate::record::{to_nanos, Record, RecordRef};
use crate::types::{CommitOptions, Info, Kind, Labels, Usage};

/// How many snapshots [`MetaStore::walk`] reads per read transaction.
pub const WALK_BATCH: usize = 100;

const SCHEMA_VERSION: u32 = 1;
/// LMDB reader slots (its default is 126).
const MAX_READERS: u32 = 1024;
const NEXT_ID: &[u8] = b"next_id";
const VERSION_KEY: &[u8] = b"version";

/// Options of [`MetaStore::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Skip the fsync at each commit (containerd's `no_sync`): faster, but a power loss
    /// can lose the most recent operations. A process crash loses nothing either way.
    pub no_sync: bool,
    /// The initial size of the memory map in bytes; the map doubles whenever it is full.
    pub map_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            no_sync: false,
            map_size: 64 << 20,
        }
    }
}

/// What the store knows of one snapshot that a backend needs to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The internal id; backends name directories after it.
    pub id: u64,
    /// The snapshot's kind.
    pub kind: Kind,
    /// The ids of the parent chain, the immediate parent first and the root last.
    pub parent_ids: Vec<u64>,
}

/// What [`Reader::check_commit`] found: the commit that [`WriteTxn::commit_active`]
/// would record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPlan {
    /// The active snapshot's id, which the committed snapshot keeps.
    pub id: u64,
    /// True when the commit gives a parentless snapshot a parent (containerd 2.2's rebase).
    pub rebase: bool,
    /// The committed snapshot's parent name.
    pub parent: String,
    /// Its parent ids, nearest first.
    pub parent_ids: Vec<u64>,
}

/// The store's database handles (opaque).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Dbs {
    snapshots: Database<Bytes, Bytes>,
    keys: Database<Bytes, Bytes>,
    children: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
}

struct Open {
    env: Env<WithoutTls>,
    dbs: Dbs,
}

/// An LMDB metastore for one snapshotter root. Cheap to share between threads.
pub struct MetaStore {
    path: PathBuf,
    // Readers and writers hold the read side; growing the map and closing take the write
    // side, because LMDB allows neither while a transaction is live.
    inner: RwLock<Option<Open>>,
    // The highest id handed out by this process, committed or not. An aborted transaction
    // does not persist the counter, and its caller may still be undoing a directory named
    // after the id: a concurrent create must never get the same id.
    issued: AtomicU64,
    writer: std::sync::Mutex<()>,
    // The shared flush of a durable store (None with `no_sync`).
    flusher: Option<Flusher>,
}

/// Group commit: a durable store commits its transactions with LMDB's `NO_META_SYNC`
/// (the data pages are flushed before the meta page is written, as always, but the meta
/// page is not flushed at commit), and each writer waits, after its commit and outside
/// the writer lock, for a flush of the data file that covers its meta page. One flush
/// serves every writer that committed before it started, so concurrent writers share it;
/// a single writer pays what a synchronous commit costs. A transaction is visible to other
/// calls from its commit, and acknowledged only once flushed.
///
/// A failed flush (or a commit that fails for another reason than a full map) leaves the
/// latest commits visible but perhaps not on the disk, and the kernel keeps the pages it
/// could not write cached as if they were: the store fails every call from then on
/// (fail-stop). A durable open flushes and drops the data file's cache first, so the
/// restarted snapshotter reads what the disk holds.
struct Flusher {
    state: std::sync::Mutex<FlushState>,
    done: std::sync::Condvar,
    // The flusher's own open file of data.mdb. Linux reports a writeback error once per
    // open file: on LMDB's descriptor, the next commit's own fdatasync could take the
    // error of an earlier writer's meta page, and this flush would then succeed.
    file: std::fs::File,
    // Set with `FlushState::failed`, so reads check it without the lock.
    stopped: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FlushState {
    // Transactions committed, and how many of them a finished flush covers.
    committed: u64,
    flushed: u64,
    running: bool,
    failed: Option<String>,
}

impl Flusher {
    fn new(file: std::fs::File) -> Flusher {
        Flusher {
            state: std::sync::Mutex::default(),
            done: std::sync::Condvar::new(),
            file,
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a commit (under the writer lock, so the numbers follow the commit order).
    fn committed(&self) -> u64 {
        let mut st = self.lock();
        st.committed += 1;
        st.committed
    }

    /// Stops the store: a flush or a commit failed.
    fn fail(&self, st: &mut FlushState, path: &Path, e: &dyn std::fmt::Display) {
        log::error!(
            "metastore {}: writing to disk failed: {e}; the store stops",
            path.display()
        );
        st.failed.get_or_insert_with(|| e.to_string());
        self.stopped.store(true, Ordering::SeqCst);
        self.done.notify_all();
    }

    /// A commit failed for another reason than a full map: what it wrote, and what the
    /// writers before it wrote, may not be on the disk.
    fn commit_failed(&self, path: &Path, e: &Error) {
        let mut st = self.lock();
        self.fail(&mut st, path, e);
    }

    /// Returns once commit `seq` is flushed, running the flush itself when none runs.
    fn wait(&self, seq: u64, path: &Path) -> Result<()> {
        self.wait_with(seq, path, || {
            rustix::fs::fdatasync(&self.file).map_err(|e| {
                Error::unknown(format!("flush {}", path.display()))
                    .with_source(std::io::Error::from(e))
            })
        })
    }

    fn wait_with(&self, seq: u64, path: &Path, sync: impl Fn() -> Result<()>) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.flushed >= seq {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(failed_flush(path, e));
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.running = true;
            let target = st.committed;
            drop(st);
            // A panic must not leave the flush marked as running: every writer would wait.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&sync))
                .unwrap_or_else(|_| Err(Error::unknown("the flush panicked")));
            st = self.lock();
            st.running = false;
            match r {
                Ok(()) => st.flushed = st.flushed.max(target),
                Err(e) => self.fail(&mut st, path, &e),
            }
            self.done.notify_all();
        }
    }

    /// Flushes a closing store (no writer is left): it covers every commit.
    fn close(&self, path: &Path) -> Result<()> {
        let st = self.lock();
        let seq = st.committed;
        drop(st);
        self.wait(seq, path)
    }

    fn failed(&self, path: &Path) -> Result<()> {
        if !self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &self.lock().failed {
            Some(e) => Err(failed_flush(path, e)),
            None => Ok(()),
        }
    }
}

fn failed_flush(path: &Path, e: &str) -> Error {
    Error::unavailable(format!(
        "metastore {}: writing to disk failed ({e}): the latest changes may be lost; check \
         the disk, then restart the snapshotter",
        path.display()
    ))
}

/// Drops the page cache of `<dir>/data.mdb` after flushing it, so that the open reads what
/// the disk holds: a page whose writeback failed stays cached (clean, with the contents
/// that never reached the disk) and another open would read it back.
fn read_from_disk(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir.join("data.mdb")) {
        let _ = rustix::fs::fdatasync(&f);
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
}

/// A read transaction with the store's databases.
pub struct ReadTxn<'a> {
    txn: RoTxn<'a, WithoutTls>,
    dbs: Dbs,
}

/// A write transaction with the store's databases; it commits when the closure given to
/// [`MetaStore::write`] returns `Ok`.
pub struct WriteTxn<'a> {
    txn: RwTxn<'a>,
    dbs: Dbs,
    issued: &'a AtomicU64,
}

impl MetaStore {
    /// Opens (or creates) the store in directory `dir` (LMDB's `data.mdb` and `lock.mdb`).
    ///
    /// # Errors
    /// Unavailable when the same directory is already open in this process; Unknown when
    /// the directory cannot be created or LMDB refuses it.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<MetaStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create metastore dir", dir, e))?;
        if !opts.no_sync {
            read_from_disk(dir);
        }
        let env = open_env(dir, opts)?;
        // A process killed with a read transaction open leaves a stale reader slot.
        if let Err(e) = env.clear_stale_readers() {
            log::warn!("metastore {}: clearing stale readers: {e}", dir.display());
        }
        let mut wtxn = env.write_txn()?;
        let dbs = Dbs {
            snapshots: env.create_database(&mut wtxn, Some("snapshots"))?,
            keys: env.create_database(&mut wtxn, Some("keys"))?,
            children: env.create_database(&mut wtxn, Some("children"))?,
            meta: env.create_database(&mut wtxn, Some("meta"))?,
        };
        match dbs.meta.get(&wtxn, VERSION_KEY)? {
            None => dbs
                .meta
                .put(&mut wtxn, VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?,
            Some(v) if v == SCHEMA_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(Error::failed_precondition(format!(
                    "metastore {}: schema version {v:?} is not {SCHEMA_VERSION}: open it with \
                     the release that wrote it",
                    dir.display()
                )))
            }
        }
        wtxn.commit()?;
        if !opts.no_sync {
            // The open's own transaction left its meta page unflushed.
            env.force_sync()?;
        }
        Ok(MetaStore {
            path: dir.to_path_buf(),
            inner: RwLock::new(Some(Open { env, dbs })),
            issued: AtomicU64::new(0),
            writer: std::sync::Mutex::new(()),
            flusher: match opts.no_sync {
                true => None,
                false => {
                    let data = dir.join("data.mdb");
                    let file = std::fs::File::open(&data)
                        .map_err(|e| Error::io("open for flushing", &data, e))?;
                    Some(Flusher::new(file))
                }
            },
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction.
    ///
    /// # Errors
    /// Unavailable after [`close`](Self::close); whatever `f` returns.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTxn<'_>) -> Result<T>) -> Result<T> {
        self.check_flushed()?;
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let open = guard.as_ref().ok_or_else(|| self.closed())?;
        let txn = ReadTxn {
            txn: open.env.read_txn()?,
            dbs: open.dbs,
        };
        f(&txn)
    }

    /// Runs `f` in a write transaction and commits it if `f` returns `Ok`.
    ///
    /// `f` runs once. Before the transaction starts, the map is doubled when less than half
    /// of it is free, so a transaction smaller than half the map never finds it full.
    ///
    /// # Errors
    /// Unavailable after [`close`](Self::close), or when one transaction needed more than
    /// the free half of the map (the map has grown meanwhile: retry); whatever `f` returns
    /// (the transaction is then aborted); Unknown when the commit fails.
    pub fn write<T>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>) -> Result<T> {
        let (v, seq) = self.write_unflushed(f)?;
        if let (Some(fl), Some(seq)) = (&self.flusher, seq) {
            fl.wait(seq, &self.path)?;
        }
        Ok(v)
    }

    /// Whether a flush failed: the store then fails every call (see [`MetaStore::write`]).
    pub fn flush_failed(&self) -> bool {
        self.check_flushed().is_err()
    }

    fn check_flushed(&self) -> Result<()> {
        match &self.flusher {
            Some(fl) => fl.failed(&self.path),
            None => Ok(()),
        }
    }

    /// [`write`](Self::write) up to its commit; returns the commit's number for the flush.
    fn write_unflushed<T>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<(T, Option<u64>)> {
        self.check_flushed()?;
        // LMDB runs one writer at a time anyway; queueing here instead means the headroom
        // seen below is not used up by writers that checked it at the same moment.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.ensure_headroom()?;
        let seen = {
            let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let open = guard.as_ref().ok_or_else(|| self.closed())?;
            let mut txn = WriteTxn {
                txn: open.env.write_txn()?,
                dbs: open.dbs,
                issued: &self.issued,
            };
            let res = f(&mut txn).and_then(|v| {
                if let Err(e) = txn.txn.commit() {
                    let e = Error::from(e);
                    if let (false, Some(fl)) = (is_map_full(&e), &self.flusher) {
                        fl.commit_failed(&self.path, &e);
                    }
                    return Err(e);
                }
                Ok((v, self.flusher.as_ref().map(Flusher::committed)))
            });
            match res {
                Err(e) if is_map_full(&e) => open.env.info().map_size,
                other => return other,
            }
        };
        self.grow(seen)?;
        Err(Error::unavailable(format!(
            "metastore {}: one transaction filled the map; it has grown: retry the call",
            self.path.display()
        )))
    }

    /// The current size of the memory map in bytes.
    ///
    /// # Errors
    /// Unavailable after [`close`](Self::close).
    pub fn map_size(&self) -> Result<usize> {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let open = guard.as_ref().ok_or_else(|| self.closed())?;
        Ok(open.env.info().map_size)
    }

    /// Reserves a fresh id for a snapshot that [`WriteTxn::create_with_id`] records later:
    /// above every id persisted and every id this process handed out, so a directory can
    /// be named after it before its transaction runs.
    ///
    /// # Errors
    /// Unavailable after [`close`](Self::close); Unknown when the counter cannot be read.
    pub fn reserve_id(&self) -> Result<u64> {
        let persisted = self.read(|tx| persisted_next_id(tx))?;
        Ok(issue_id(&self.issued, persisted))
    }

    /// Reserves `n` fresh ids as [`reserve_id`](Self::reserve_id) does and persists the
    /// counter past them in one durable transaction, so that no later open hands them out
    /// again: a directory named after one of them may outlive this process (a crash, a
    /// thread still deleting it) without ever being taken for another snapshot's.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn reserve_ids(&self, n: usize) -> Result<Vec<u64>> {
        self.write(|tx| (0..n).map(|_| tx.next_id()).collect())
    }

    /// Closes the store; every later call returns Unavailable. Closing twice is fine.
    pub fn close(&self) -> Result<()> {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let flushed = match (guard.as_ref(), &self.flusher) {
            (Some(_), Some(fl)) => fl.close(&self.path),
            _ => Ok(()),
        };
        if let Some(open) = guard.take() {
            // Waits for nothing: the write lock means no transaction is live.
            open.env.prepare_for_closing();
        }
        flushed
    }

    /// Reads every snapshot whose info matches `filters` (containerd filter strings, OR'd)
    /// and calls `f` on each, outside any transaction, so `f` may call the store (e.g.
    /// `stat`). Reads [`WALK_BATCH`] records per transaction; never holds all of them.
    ///
    /// # Errors
    /// InvalidArgument for a filter that does not parse; the first error `f` returns.
    pub fn walk<S: AsRef<str>>(
        &self,
        filters: &[S],
        mut f: impl FnMut(&Info) -> Result<()>,
    ) -> Result<()> {
        let filters = FilterSet::parse(filters)?;
        let mut after: Option<u64> = None;
        let mut batch = Vec::with_capacity(WALK_BATCH);
        loop {
            batch.clear();
            let done = self.read(|tx| {
                let lower = match after {
                    Some(id) => Bound::Excluded(id.to_be_bytes()),
                    None => Bound::Unbounded,
                };
                let range = (lower.as_ref().map(|b| &b[..]), Bound::Unbounded);
                let mut scanned = 0usize;
                for item in tx.dbs.snapshots.range(&tx.txn, &range)? {
                    let (k, v) = item?;
                    after = Some(decode_id(k)?);
                    scanned += 1;
                    let info = RecordRef::decode(v)?.info()?;
                    if filters.matches(&info) {
                        batch.push(info);
                    }
                    if scanned == WALK_BATCH {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            for info in &batch {
                f(info)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Doubles the map while less than half of it is free.
    fn ensure_headroom(&self) -> Result<()> {
        let seen = {
            let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let open = guard.as_ref().ok_or_else(|| self.closed())?;
            let info = open.env.info();
            let used = (info.last_page_number + 1) * rustix::param::page_size();
            if used * 2 <= info.map_size {
                return Ok(());
            }
            info.map_size
        };
        self.grow(seen)
    }

    fn grow(&self, seen: usize) -> Result<()> {
        let guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let open = guard.as_ref().ok_or_else(|| self.closed())?;
        let info = open.env.info();
        let current = info.map_size;
        if current > seen {
            return Ok(()); // another writer grew it already
        }
        let used = (info.last_page_number + 1) * rustix::param::page_size();
        let mut new_size = current;
        while new_size < used * 2 || new_size == current {
            new_size = new_size.checked_mul(2).ok_or_else(|| {
                Error::unknown(format!(
                    "metastore {}: map cannot grow further",
                    self.path.display()
                ))
            })?;
        }
        log::info!(
            "metastore {}: map full, growing to {new_size} bytes",
            self.path.display()
        );
        resize_env(&open.env, new_size)
    }

    fn closed(&self) -> Error {
        Error::unavailable(format!(
            "metastore {} is closed: open the snapshotter again",
            self.path.display()
        ))
    }
}

/// Opens an LMDB environment.
///
/// This is one of the crate's three `unsafe` helpers. LMDB maps the file into memory; heed
/// marks opening unsafe because another writer that modifies the file outside LMDB's
/// locking would be undefined behaviour. The store owns its directory and only LMDB
/// writes to it.
fn open_env(dir: &Path, opts: &StoreOptions) -> Result<Env<WithoutTls>> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    let page = rustix::param::page_size();
    options
        .map_size(opts.map_size.max(page).div_ceil(page) * page)
        .max_dbs(8)
        // Above any number of calls the daemon runs at once (tokio's blocking pool has
        // 512 threads), so a burst of reads never finds the reader table full.
        .max_readers(MAX_READERS);
    if opts.no_sync {
        // SAFETY: NO_SYNC only drops the fsync at commit; it is unsafe in heed because it
        // voids durability across power loss, which the option documents.
        unsafe { options.flags(EnvFlags::NO_SYNC) };
    } else {
        // SAFETY: NO_META_SYNC drops only the flush of the meta page at commit (the data
        // pages are still flushed before the meta page is written, so the file stays
        // consistent); MetaStore::write flushes it before the call returns (Flusher).
        unsafe { options.flags(EnvFlags::NO_META_SYNC) };
    }
    // SAFETY: see the function comment.
    match unsafe { options.open(dir) } {
        Ok(env) => {
            close_data_file_on_exec(dir);
            Ok(env)
        }
        Err(heed::Error::EnvAlreadyOpened) => Err(Error::unavailable(format!(
            "metastore {} is already open in this process: close the other snapshotter on \
             this root first",
            dir.display()
        ))),
        Err(e) => Err(Error::unknown(format!("open metastore {}", dir.display())).with_source(e)),
    }
}

/// Marks LMDB's descriptor of `<dir>/data.mdb` close-on-exec. LMDB opens its lock file and
/// meta descriptor with `O_CLOEXEC` but not the data file, so every process the program
/// starts (a mount helper, `modprobe`, a test's `cp`) would inherit it and keep the
/// filesystem under the root busy (it cannot be unmounted) for as long as that process
/// runs.
///
/// The crate's third `unsafe` helper: the descriptor is found by number in
/// `/proc/self/fd` and borrowed for one `fcntl`. It is LMDB's and stays open while the
/// environment lives; a descriptor closed and reused by another thread in between would
/// only get close-on-exec, which no descriptor of this crate relies on lacking.
fn close_data_file_on_exec(dir: &Path) {
    let data = dir.join("data.mdb");
    let data = std::fs::canonicalize(&data).unwrap_or(data);
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(data.as_path()) {
            continue;
        }
        // SAFETY: see the function comment.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            if !flags.contains(rustix::io::FdFlags::CLOEXEC) {
                let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
            }
        }
    }
}

/// Grows the memory map.
///
/// Another of the crate's `unsafe` helpers: LMDB allows a resize only while no transaction of
/// this process is live, which the caller guarantees by holding the store's write lock.
fn resize_env(env: &Env<WithoutTls>, new_size: usize) -> Result<()> {
    // SAFETY: see the function comment.
    unsafe { env.resize(new_size) }.map_err(Error::from)
}

fn is_map_full(e: &Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(heed::Error::Mdb(MdbError::MapFull)) = s.downcast_ref::<heed::Error>() {
            return true;
        }
        src = s.source();
    }
    false
}

fn decode_id(bytes: &[u8]) -> Result<u64> {
    bytes.try_into().map(u64::from_be_bytes).map_err(|_| {
        Error::unknown("metastore: corrupt snapshot id: restore the root from a backup")
    })
}

fn key_hash(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

fn child_key(parent: u64, child: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&parent.to_be_bytes());
    k[8..].copy_from_slice(&child.to_be_bytes());
    k
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {:?}", truncate_for_message(key)))
}

mod sealed {
    pub trait Parts {
        fn parts(&self) -> (&heed::RoTxn<'_, heed::WithoutTls>, super::Dbs);
    }
}

/// Read operations, offered by both [`ReadTxn`] and [`WriteTxn`].
pub trait Reader: sealed::Parts {
    /// The snapshot's id, kind and parent ids.
    ///
    /// # Errors
    /// NotFound when the key does not exist.
    fn snapshot(&self, key: &str) -> Result<Snapshot> {
        let (id, rec) = lookup(self, key)?;
        Ok(Snapshot {
            id,
            kind: rec.kind,
            parent_ids: rec.parent_ids().collect(),
        })
    }

    /// The snapshot's info (kind, name, parent name, labels, times).
    ///
    /// # Errors
    /// NotFound when the key does not exist.
    fn info(&self, key: &str) -> Result<Info> {
        lookup(self, key)?.1.info()
    }

    /// The id and info of the snapshot.
    ///
    /// # Errors
    /// NotFound when the key does not exist.
    fn id_and_info(&self, key: &str) -> Result<(u64, Info)> {
        let (id, rec) = lookup(self, key)?;
        Ok((id, rec.info()?))
    }

    /// The usage stored at commit (zero for active and view snapshots).
    ///
    /// # Errors
    /// NotFound when the key does not exist.
    fn stored_usage(&self, key: &str) -> Result<(Kind, Usage)> {
        let (_, rec) = lookup(self, key)?;
        Ok((rec.kind, rec.usage))
    }

    /// True if a snapshot with internal id `id` exists (for orphan sweeps).
    fn has_id(&self, id: u64) -> Result<bool> {
        let (txn, dbs) = self.parts();
        Ok(dbs.snapshots.get(txn, &id.to_be_bytes())?.is_some())
    }

    /// Every id with its key (containerd's `IDMap`).
    fn id_map(&self) -> Result<HashMap<u64, String>> {
        let (txn, dbs) = self.parts();
        let mut out = HashMap::new();
        for item in dbs.snapshots.iter(txn)? {
            let (k, v) = item?;
            out.insert(decode_id(k)?, RecordRef::decode(v)?.key.to_string());
        }
        Ok(out)
    }

    /// True if any snapshot has `id` as its immediate parent: one range seek.
    fn has_children(&self, id: u64) -> Result<bool> {
        let (txn, dbs) = self.parts();
        let lo = child_key(id, 0);
        let hi = child_key(id, u64::MAX);
        let range = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        Ok(dbs
            .children
            .range(txn, &range)?
            .next()
            .transpose()?
            .is_some())
    }

    /// The kind of the snapshot with internal id `id`, or `None` when there is none (for
    /// orphan sweeps).
    fn kind_of(&self, id: u64) -> Result<Option<Kind>> {
        let (txn, dbs) = self.parts();
        match dbs.snapshots.get(txn, &id.to_be_bytes())? {
            Some(raw) => Ok(Some(RecordRef::decode(raw)?.kind)),
            None => Ok(None),
        }
    }

    /// Every check of [`WriteTxn::create`], without writing: returns the parent ids the
    /// snapshot would get (nearest first).
    ///
    /// # Errors
    /// InvalidArgument for a bad key, bad labels, a `kind` of Committed, or a parent that
    /// is not committed; NotFound for a missing parent; AlreadyExists when `key` exists.
    /// The parent is checked before the key, as containerd does.
    fn check_create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
    ) -> Result<Vec<u64>> {
        validate_key("key", key)?;
        if kind == Kind::Committed {
            return Err(Error::invalid_argument(format!(
                "snapshot {:?}: kind must be active or view, not committed",
                truncate_for_message(key)
            )));
        }
        validate_labels(labels)?;
        let mut parent_ids = Vec::new();
        if !parent.is_empty() {
            validate_key("parent", parent)?;
            let (pid, prec) = lookup(self, parent).map_err(|e| parent_error(e, parent))?;
            if prec.kind != Kind::Committed {
                return Err(Error::invalid_argument(format!(
                    "parent {:?} is not a committed snapshot: commit it first",
                    truncate_for_message(parent)
                )));
            }
            parent_ids.reserve(prec.parent_ids().len() + 1);
            parent_ids.push(pid);
            parent_ids.extend(prec.parent_ids());
        }
        let (txn, dbs) = self.parts();
        if dbs.keys.get(txn, &key_hash(key))?.is_some() {
            return Err(Error::already_exists(format!(
                "snapshot {:?}",
                truncate_for_message(key)
            )));
        }
        Ok(parent_ids)
    }

    /// Every check of [`WriteTxn::commit_active`], without writing.
    ///
    /// # Errors
    /// AlreadyExists when `name` exists (checked first); NotFound for a missing key;
    /// FailedPrecondition when `key` is not active or the rebase parent is not committed;
    /// InvalidArgument for a bad name, bad labels, or a rebase onto a different parent.
    fn check_commit(&self, key: &str, name: &str, opts: &CommitOptions) -> Result<CommitPlan> {
        validate_key("name", name)?;
        let (txn, dbs) = self.parts();
        if dbs.keys.get(txn, &key_hash(name))?.is_some() {
            return Err(Error::already_exists(format!(
                "snapshot {:?}",
                truncate_for_message(name)
            )));
        }
        validate_key("key", key)?;
        if !opts.parent.is_empty() {
            validate_key("parent", &opts.parent)?;
        }
        validate_labels(&opts.labels)?;
        let (id, rec) = lookup(self, key)?;
        if rec.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {:?} is not active: only snapshots made by prepare can be committed",
                truncate_for_message(key)
            )));
        }
        let mut plan = CommitPlan {
            id,
            rebase: false,
            parent: rec.parent.to_string(),
            parent_ids: rec.parent_ids().collect(),
        };
        if !opts.parent.is_empty() && opts.parent != plan.parent {
            if !plan.parent.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "cannot change parent of active snapshot {:?} from {:?} to {:?}",
                    truncate_for_message(key),
                    truncate_for_message(&plan.parent),
                    truncate_for_message(&opts.parent)
                )));
            }
            let (pid, prec) =
                lookup(self, &opts.parent).map_err(|e| parent_error(e, &opts.parent))?;
            if prec.kind != Kind::Committed {
                return Err(Error::failed_precondition(format!(
                    "parent {:?} is not a committed snapshot",
                    truncate_for_message(&opts.parent)
                )));
            }
            plan.parent_ids = std::iter::once(pid).chain(prec.parent_ids()).collect();
            plan.parent = opts.parent.clone();
            plan.rebase = true;
        }
        Ok(plan)
    }

    /// Checks the store's invariants: every key index entry points at a record holding
    /// that key, every record is indexed, child links match parent ids, and the id
    /// counter is past every id. Returns the number of snapshots.
    ///
    /// # Errors
    /// Unknown naming the first inconsistency.
    fn check(&self) -> Result<usize> {
        let (txn, dbs) = self.parts();
        let bad = |m: String| Error::unknown(format!("metastore consistency check: {m}"));
        let next = match dbs.meta.get(txn, NEXT_ID)? {
            Some(v) => decode_id(v)?,
            None => 1,
        };
        let mut links = HashSet::new();
        let mut count = 0;
        for item in dbs.snapshots.iter(txn)? {
            let (k, v) = item?;
            let id = decode_id(k)?;
            let rec = RecordRef::decode(v)?;
            if id >= next {
                return Err(bad(format!("id {id} is not below the counter {next}")));
            }
            match dbs.keys.get(txn, &key_hash(rec.key))? {
                Some(v) if decode_id(v)? == id => {}
                _ => return Err(bad(format!("snapshot {id} ({:?}) is not indexed", rec.key))),
            }
            let ids: Vec<u64> = rec.parent_ids().collect();
            if let Some(&p) = ids.first() {
                let prec = dbs.snapshots.get(txn, &p.to_be_bytes())?;
                let prec = prec.ok_or_else(|| bad(format!("snapshot {id}: parent {p} missing")))?;
                let prec = RecordRef::decode(prec)?;
                if prec.kind != Kind::Committed || prec.key != rec.parent {
                    return Err(bad(format!(
                        "snapshot {id}: parent {p} is not {:?}",
                        rec.parent
                    )));
                }
                if prec.parent_ids().ne(ids[1..].iter().copied()) {
                    return Err(bad(format!(
                        "snapshot {id}: parent chain differs from {p}'s"
                    )));
                }
                links.insert(child_key(p, id));
            } else if !rec.parent.is_empty() {
                return Err(bad(format!("snapshot {id}: parent name without parent id")));
            }
            count += 1;
        }
        let mut link_count = 0;
        for item in dbs.children.iter(txn)? {
            let (k, _) = item?;
            if !links.contains(k) {
                return Err(bad(format!("stale child link {k:?}")));
            }
            link_count += 1;
        }
        if link_count != links.len() {
            return Err(bad("missing child links".into()));
        }
        if dbs.keys.len(txn)? as usize != count {
            return Err(bad("stale key index entries".into()));
        }
        Ok(count)
    }
}

fn lookup<'t, R: Reader + ?Sized>(r: &'t R, key: &str) -> Result<(u64, RecordRef<'t>)> {
    let (txn, dbs) = r.parts();
    let Some(id) = dbs.keys.get(txn, &key_hash(key))? else {
        return Err(not_found(key));
    };
    let id = decode_id(id)?;
    let Some(raw) = dbs.snapshots.get(txn, &id.to_be_bytes())? else {
        return Err(Error::unknown(format!(
            "metastore: key {:?} points at missing snapshot {id}",
            truncate_for_message(key)
        )));
    };
    let rec = RecordRef::decode(raw)?;
    if rec.key != key {
        // A blake3 collision: treat the key as absent rather than alias another snapshot.
        return Err(not_found(key));
    }
    Ok((id, rec))
}

impl Reader for ReadTxn<'_> {}
impl Reader for WriteTxn<'_> {}

impl sealed::Parts for ReadTxn<'_> {
    fn parts(&self) -> (&RoTxn<'_, WithoutTls>, Dbs) {
        (&self.txn, self.dbs)
    }
}

impl sealed::Parts for WriteTxn<'_> {
    fn parts(&self) -> (&RoTxn<'_, WithoutTls>, Dbs) {
        (&self.txn, self.dbs)
    }
}

impl WriteTxn<'_> {
    /// Creates an active or view snapshot `key` on the committed snapshot `parent` (empty
    /// for none) with `labels`, under a fresh id; `created == updated`.
    ///
    /// # Errors
    /// As [`Reader::check_create`].
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
    ) -> Result<Snapshot> {
        let parent_ids = self.check_create(kind, key, parent, labels)?;
        let id = self.next_id()?;
        self.insert(id, kind, key, parent, parent_ids, labels)
    }

    /// [`create`](Self::create) under `id`, an id from [`MetaStore::reserve_id`] (the
    /// caller named a directory after it before this transaction).
    ///
    /// # Errors
    /// As [`Reader::check_create`]; InvalidArgument when `id` is taken.
    pub fn create_with_id(
        &mut self,
        id: u64,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
    ) -> Result<Snapshot> {
        let parent_ids = self.check_create(kind, key, parent, labels)?;
        if id == 0 || self.has_id(id)? {
            return Err(Error::invalid_argument(format!(
                "snapshot id {id} is taken: reserve ids with MetaStore::reserve_id"
            )));
        }
        let next = persisted_next_id(self)?;
        if id >= next {
            self.dbs
                .meta
                .put(&mut self.txn, NEXT_ID, &(id + 1).to_be_bytes())?;
        }
        self.insert(id, kind, key, parent, parent_ids, labels)
    }

    fn insert(
        &mut self,
        id: u64,
        kind: Kind,
        key: &str,
        parent: &str,
        parent_ids: Vec<u64>,
        labels: &Labels,
    ) -> Result<Snapshot> {
        let labels = &*stored_labels(labels);
        let now = to_nanos(SystemTime::now());
        let rec = Record {
            kind,
            created: now,
            updated: now,
            usage: Usage::default(),
            key,
            parent,
            parent_ids: &parent_ids,
            labels,
        };
        self.dbs
            .snapshots
            .put(&mut self.txn, &id.to_be_bytes(), &rec.encode())?;
        self.dbs
            .keys
            .put(&mut self.txn, &key_hash(key), &id.to_be_bytes())?;
        if let Some(&pid) = parent_ids.first() {
            self.dbs
                .children
                .put(&mut self.txn, &child_key(pid, id), &[])?;
        }
        Ok(Snapshot {
            id,
            kind,
            parent_ids,
        })
    }

    /// Updates the labels of `info.name` along `fieldpaths` and returns the new info.
    ///
    /// No paths or `labels` replace all labels with `info.labels`; `labels.<k>` sets one
    /// label from `info.labels` (absent or empty deletes it). Name, kind, parent and
    /// created never change; `updated` becomes now.
    ///
    /// # Errors
    /// NotFound for a missing snapshot; InvalidArgument for any other field path or labels
    /// over the size limit.
    pub fn update_info<S: AsRef<str>>(&mut self, info: &Info, fieldpaths: &[S]) -> Result<Info> {
        let (id, rec) = lookup(self, &info.name)?;
        let mut labels = rec.labels()?;
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        }
        for path in fieldpaths {
            let path = path.as_ref();
            if path == "labels" {
                labels = info.labels.clone();
            } else if let Some(k) = path.strip_prefix("labels.") {
                match info.labels.get(k).filter(|v| !v.is_empty()) {
                    Some(v) => labels.insert(k.to_string(), v.clone()),
                    None => labels.remove(k),
                };
            } else {
                return Err(Error::invalid_argument(format!(
                    "cannot update {path:?} field on snapshot {:?}: only labels and \
                     labels.<key> can be updated",
                    truncate_for_message(&info.name)
                )));
            }
        }
        // An empty value deletes, whichever path set it (containerd's WriteLabels).
        labels.retain(|_, v| !v.is_empty());
        validate_labels(&labels)?;
        let parent_ids: Vec<u64> = rec.parent_ids().collect();
        let (kind, created, usage) = (rec.kind, rec.created, rec.usage);
        let parent = rec.parent.to_string();
        let updated = to_nanos(SystemTime::now()).max(created);
        let new = Record {
            kind,
            created,
            updated,
            usage,
            key: &info.name,
            parent: &parent,
            parent_ids: &parent_ids,
            labels: &labels,
        };
        let buf = new.encode();
        self.dbs
            .snapshots
            .put(&mut self.txn, &id.to_be_bytes(), &buf)?;
        RecordRef::decode(&buf)?.info()
    }

    /// Commits the active snapshot `key` as `name`: the committed snapshot keeps the id and
    /// parent, gets `opts.labels` (not the active's), fresh times and `usage`. The key is
    /// free at once. With `opts.parent` set, a parentless snapshot is rebased onto it.
    /// Returns the id.
    ///
    /// # Errors
    /// AlreadyExists when `name` exists (checked first); NotFound for a missing key;
    /// FailedPrecondition when `key` is not active or the rebase parent is not committed;
    /// InvalidArgument for a bad name, bad labels, or a rebase onto a different parent.
    pub fn commit_active(
        &mut self,
        key: &str,
        name: &str,
        usage: Usage,
        opts: &CommitOptions,
    ) -> Result<u64> {
        let CommitPlan {
            id,
            rebase,
            parent,
            parent_ids,
        } = self.check_commit(key, name, opts)?;
        let labels = stored_labels(&opts.labels);
        let name_hash = key_hash(name);
        let now = to_nanos(SystemTime::now());
        let new = Record {
            kind: Kind::Committed,
            created: now,
            updated: now,
            usage,
            key: name,
            parent: &parent,
            parent_ids: &parent_ids,
            labels: &labels,
        };
        self.dbs
            .snapshots
            .put(&mut self.txn, &id.to_be_bytes(), &new.encode())?;
        self.dbs.keys.delete(&mut self.txn, &key_hash(key))?;
        self.dbs
            .keys
            .put(&mut self.txn, &name_hash, &id.to_be_bytes())?;
        if rebase {
            self.dbs
                .children
                .put(&mut self.txn, &child_key(parent_ids[0], id), &[])?;
        }
        Ok(id)
    }

    /// Removes `key`'s metadata and returns its id and kind; the caller deletes files.
    ///
    /// # Errors
    /// NotFound for a missing key; FailedPrecondition when the snapshot has children.
    pub fn remove(&mut self, key: &str) -> Result<(u64, Kind)> {
        let (id, rec) = lookup(self, key)?;
        let kind = rec.kind;
        let parent = rec.parent_ids().next();
        if self.has_children(id)? {
            return Err(Error::failed_precondition(format!(
                "cannot remove snapshot {:?} with child: remove its children first",
                truncate_for_message(key)
            )));
        }
        self.dbs
            .snapshots
            .delete(&mut self.txn, &id.to_be_bytes())?;
        self.dbs.keys.delete(&mut self.txn, &key_hash(key))?;
        if let Some(pid) = parent {
            self.dbs
                .children
                .delete(&mut self.txn, &child_key(pid, id))?;
        }
        Ok((id, kind))
    }

    fn next_id(&mut self) -> Result<u64> {
        let persisted = persisted_next_id(self)?;
        let id = issue_id(self.issued, persisted);
        self.dbs
            .meta
            .put(&mut self.txn, NEXT_ID, &(id + 1).to_be_bytes())?;
        Ok(id)
    }
}

/// The counter's value: the lowest id never persisted.
fn persisted_next_id<R: Reader + ?Sized>(r: &R) -> Result<u64> {
    let (txn, dbs) = r.parts();
    match dbs.meta.get(txn, NEXT_ID)? {
        Some(v) => decode_id(v),
        None => Ok(1),
    }
}

/// Hands out an id at or above `persisted` and above every id handed out before in this
/// process (an aborted transaction does not persist the counter, and its caller may still
/// be undoing a directory named after the id).
fn issue_id(issued: &AtomicU64, persisted: u64) -> u64 {
    let mut cur = issued.load(Ordering::Relaxed);
    loop {
        let id = persisted.max(cur + 1);
        match issued.compare_exchange(cur, id, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return id,
            Err(now) => cur = now,
        }
    }
}

/// The labels as stored: containerd never stores a label with an empty value.
fn stored_labels(labels: &Labels) -> Cow<'_, Labels> {
    if labels.values().any(String::is_empty) {
        let mut l = labels.clone();
        l.retain(|_, v| !v.is_empty());
        Cow::Owned(l)
    } else {
        Cow::Borrowed(labels)
    }
}

fn parent_error(e: Error, parent: &str) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::not_found(format!(
            "parent {:?}: commit a snapshot with that name first",
            truncate_for_message(parent)
        ))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    #[test]
    fn one_flush_serves_every_writer_that_committed_before_it() {
        let fl = Arc::new(flusher());
        let syncs = Arc::new(AtomicUsize::new(0));
        let path = Path::new("/m");
        // Commits 1..=4, then four writers wait at once; the first flush is held until
        // all four are waiting, so it covers all four.
        let seqs: Vec<u64> = (0..4).map(|_| fl.committed()).collect();
        let start = Arc::new(Barrier::new(4));
        let handles: Vec<_> = seqs
            .into_iter()
            .map(|seq| {
                let (fl, syncs, start) = (fl.clone(), syncs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    fl.wait_with(seq, path, || {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        syncs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            1,
            "one flush for four commits"
        );
        // A commit after the flush needs a flush of its own.
        let seq = fl.committed();
        fl.wait_with(seq, path, || {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_flush_fails_that_writer_and_every_later_call() {
        let fl = flusher();
        let path = Path::new("/m");
        let seq = fl.committed();
        let err = fl
            .wait_with(seq, path, || Err(Error::unknown("EIO")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("/m"), "{err}");
        assert!(err.to_string().contains("restart the snapshotter"), "{err}");
        assert!(fl.failed(path).is_err());
        // Later writers fail without trying to flush again.
        let seq = fl.committed();
        let tried = AtomicUsize::new(0);
        assert!(fl
            .wait_with(seq, path, || {
                tried.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .is_err());
        assert_eq!(tried.load(Ordering::SeqCst), 0);
    }

    /// A flusher on a scratch file.
    fn flusher() -> Flusher {
        Flusher::new(tempfile::tempfile().unwrap())
    }

    #[test]
    fn a_flush_already_done_is_not_undone_by_a_later_failure_nor_hung_by_a_panic() {
        let fl = flusher();
        let path = Path::new("/m");
        let first = fl.committed();
        fl.wait_with(first, path, || Ok(())).unwrap();
        let second = fl.committed();
        let panicked = fl.wait_with(second, path, || panic!("boom"));
        assert!(panicked.is_err(), "a panicking flush fails its writer");
        // The first commit stays acknowledged; the store has stopped for what follows.
        fl.wait_with(first, path, || Ok(())).unwrap();
        assert!(fl.failed(path).is_err());
        let third = fl.committed();
        assert!(fl.wait_with(third, path, || Ok(())).is_err());
    }

    #[test]
    fn a_failed_commit_stops_the_store() {
        let fl = flusher();
        let path = Path::new("/m");
        fl.commit_failed(path, &Error::unknown("EIO at commit"));
        let seq = fl.committed();
        assert!(fl.wait_with(seq, path, || Ok(())).is_err());
        assert!(fl.close(path).is_err());
    }

    #[test]
    fn a_durable_write_is_acknowledged_only_once_flushed_and_reads_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let labels = Labels::new();
        store
            .write(|tx| tx.create(Kind::Active, "a", "", &labels))
            .unwrap();
        let fl = store.flusher.as_ref().expect("a durable store flushes");
        let st = fl.lock();
        assert_eq!(
            st.flushed, st.committed,
            "every acknowledged commit is flushed"
        );
        assert!(st.committed >= 1);
        drop(st);
        assert!(store.read(|tx| tx.info("a")).is_ok());
        let nosync = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            no_sync: true,
            ..StoreOptions::default()
        };
        assert!(MetaStore::open(nosync.path(), &opts)
            .unwrap()
            .flusher
            .is_none());
    }
}
