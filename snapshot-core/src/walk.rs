//! A depth-first walk of a directory tree that holds a bounded number of directories open
//! and keeps its path on the heap, so a tree of any depth (a container can make a chain of a
//! million directories in seconds) neither overflows the stack nor runs out of file
//! descriptors. Every entry is reached relative to its directory's descriptor with
//! `O_NOFOLLOW`; the top levels stay open, deeper ones are climbed back to with `..`,
//! checking that it lands in the directory the walk came from: a tree changed under it (a
//! directory moved or swapped for a symlink) can make it skip entries or fail, never leave
//! the tree.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use rustix::fs::{fstat, openat, Mode, OFlags};
use rustix::io::Errno;

/// What a walk does in each directory.
pub(crate) trait Visitor {
    /// Called once for each directory, with it open: handles its entries and returns the
    /// names of the subdirectories to descend into.
    fn scan(&mut self, dir: &OwnedFd) -> io::Result<Vec<CString>>;

    /// Called when the subdirectory `name` of `parent` has been walked.
    fn left(&mut self, parent: &OwnedFd, name: &CStr) -> io::Result<()> {
        let _ = (parent, name);
        Ok(())
    }
}

/// How many levels of the path keep their directory open: climbing back to them needs no
/// `..`, so a tree changed under a walk of ordinary depth never fails it. Deeper levels
/// are climbed back to with `..`.
const KEEP_OPEN: usize = 64;

struct Level {
    dev: u64,
    ino: u64,
    name: Option<CString>,
    pending: Vec<CString>,
    // Open while it is the current directory or within KEEP_OPEN of the top.
    fd: Option<OwnedFd>,
}

/// Walks the tree whose top directory is `top` (open).
///
/// # Errors
/// The visitor's first error; the OS error when a directory cannot be opened or read for
/// another reason than vanishing; `Other` when, below [`KEEP_OPEN`] levels, climbing back
/// does not reach the directory the walk came from (the tree was moved meanwhile).
pub(crate) fn walk(top: OwnedFd, v: &mut impl Visitor) -> io::Result<()> {
    let st = fstat(&top)?;
    let pending = v.scan(&top)?;
    let mut stack = vec![Level {
        dev: st.st_dev,
        ino: st.st_ino,
        name: None,
        pending,
        fd: Some(top),
    }];
    loop {
        let depth = stack.len();
        let level = stack.last_mut().expect("the top level is popped last");
        if let Some(name) = level.pending.pop() {
            let cur = level.fd.as_ref().expect("the current directory is open");
            let child = match open_dir(cur, name.as_c_str()) {
                Ok(c) => c,
                // Deleted, or swapped for a symlink or a file, since the scan saw it.
                Err(e) if vanished(e) => continue,
                Err(e) => return Err(e.into()),
            };
            let st = fstat(&child)?;
            let pending = v.scan(&child)?;
            if depth > KEEP_OPEN {
                level.fd = None;
            }
            stack.push(Level {
                dev: st.st_dev,
                ino: st.st_ino,
                name: Some(name),
                pending,
                fd: Some(child),
            });
            continue;
        }
        let done = stack.pop().expect("a level was just looked at");
        let Some(name) = done.name else {
            return Ok(());
        };
        let parent = stack.last_mut().expect("a named level has a parent");
        if parent.fd.is_none() {
            let cur = done.fd.as_ref().expect("the current directory is open");
            let up = open_dir(cur, c"..")?;
            let st = fstat(&up)?;
            if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
                return Err(io::Error::other(
                    "a directory was moved during the walk: its parent is not where it was",
                ));
            }
            parent.fd = Some(up);
        }
        drop(done.fd);
        v.left(parent.fd.as_ref().expect("just opened"), &name)?;
    }
}

/// The directories this close to the top are scanned as tasks of their own, each by
/// whichever thread is free; below them every subtree is walked whole by one thread.
const SHARED_DEPTH: usize = 3;
/// At most this many directories are open as shared tasks at once; past it a subtree is
/// walked whole, so a tree with a million directories at the top holds no more.
const SHARED_OPEN: usize = 64;
/// At most this many parallel walks run at once in the process; a walk that would be one
/// more runs on its calling thread alone. With [`SHARED_OPEN`] and [`KEEP_OPEN`] this
/// bounds the descriptors walks hold however many run at once (a daemon measuring every
/// active snapshot for CRI's stats poll): each parallel walk holds at most
/// `SHARED_OPEN + walkers() * (KEEP_OPEN + 1)`, each serial one `KEEP_OPEN + 1`.
const PARALLEL_WALKS: usize = 2;

/// How many threads a parallel walk uses: the CPUs this process may run on, at most 4.
pub(crate) fn walkers() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// One of the [`PARALLEL_WALKS`] a process runs at once, given back when dropped.
struct WalkSlot;

static RUNNING_WALKS: AtomicUsize = AtomicUsize::new(0);

impl WalkSlot {
    fn take() -> Option<WalkSlot> {
        RUNNING_WALKS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < PARALLEL_WALKS).then_some(n + 1)
            })
            .ok()
            .map(|_| WalkSlot)
    }
}

impl Drop for WalkSlot {
    fn drop(&mut self) {
        RUNNING_WALKS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A directory scanned as a shared task: open until every subdirectory is done.
struct Node {
    fd: OwnedFd,
    up: Option<(Arc<Node>, CString)>,
    depth: usize,
    // Subdirectories not done yet, plus one while the scan itself runs.
    pending: AtomicUsize,
}

enum Task {
    // Scan the subdirectory as a node of its own.
    Scan(Arc<Node>, CString),
    // Walk the subdirectory whole.
    Walk(Arc<Node>, CString),
}

struct Shared {
    tasks: Vec<Task>,
    busy: usize,
    failed: Option<io::Error>,
}

struct Pool {
    state: Mutex<Shared>,
    wake: Condvar,
    open: AtomicUsize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next task, or None when every task is done (or one failed).
    fn next(&self) -> Option<Task> {
        let mut st = self.lock();
        loop {
            if st.failed.is_some() {
                return None;
            }
            if let Some(t) = st.tasks.pop() {
                st.busy += 1;
                return Some(t);
            }
            if st.busy == 0 {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, r: io::Result<()>) {
        let mut st = self.lock();
        st.busy -= 1;
        if let Err(e) = r {
            st.failed.get_or_insert(e);
        }
        if st.busy == 0 || st.failed.is_some() {
            self.wake.notify_all();
        }
    }

    /// Queues the subdirectories of `node`.
    fn push(&self, node: &Arc<Node>, subdirs: Vec<CString>) {
        let mut st = self.lock();
        for name in subdirs {
            let shared = node.depth + 1 < SHARED_DEPTH
                && self.open.fetch_add(1, Ordering::Relaxed) < SHARED_OPEN;
            st.tasks.push(if shared {
                Task::Scan(Arc::clone(node), name)
            } else {
                Task::Walk(Arc::clone(node), name)
            });
        }
        drop(st);
        self.wake.notify_all();
    }

    /// Runs one task with `v`.
    fn run(&self, task: Task, v: &mut impl Visitor) -> io::Result<()> {
        match task {
            Task::Walk(parent, name) => {
                walk_below(&parent.fd, &name, v)?;
                finish(parent, v)
            }
            Task::Scan(parent, name) => {
                let fd = match open_dir(&parent.fd, name.as_c_str()) {
                    Ok(fd) => fd,
                    Err(e) if vanished(e) => return finish(parent, v),
                    Err(e) => return Err(e.into()),
                };
                let subdirs = v.scan(&fd)?;
                let node = Arc::new(Node {
                    fd,
                    depth: parent.depth + 1,
                    up: Some((parent, name)),
                    pending: AtomicUsize::new(subdirs.len() + 1),
                });
                self.push(&node, subdirs);
                finish(node, v)
            }
        }
    }
}

/// One subdirectory of `node` (or its own scan) is done; when it was the last, `left`
/// runs for `node` and its parent is told, and so on up.
fn finish(node: Arc<Node>, v: &mut impl Visitor) -> io::Result<()> {
    let mut node = node;
    loop {
        if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
        let Some((parent, name)) = &node.up else {
            return Ok(());
        };
        v.left(&parent.fd, name)?;
        let parent = Arc::clone(parent);
        node = parent;
    }
}

/// Walks the tree under `top` like [`walk`], with up to `threads` visitors made by `make`,
/// each on a thread of its own. The directories of the top [`SHARED_DEPTH`] levels are
/// tasks (scan it, queue its subdirectories) that any free thread takes; below them a
/// subtree is walked whole, with [`walk`], by the thread that took it. `left` runs for a
/// directory once everything under it is done, on the thread that finished last. A top
/// without subdirectories is scanned on the calling thread alone. Returns the visitors.
///
/// # Errors
/// As [`walk`]: the first error of any visitor or thread.
pub(crate) fn walk_parallel<V, F>(top: OwnedFd, threads: usize, make: F) -> io::Result<Vec<V>>
where
    V: Visitor + Send,
    F: Fn() -> V + Sync,
{
    let mut first = make();
    let slot = if threads < 2 { None } else { WalkSlot::take() };
    if slot.is_none() {
        walk(top, &mut first)?;
        return Ok(vec![first]);
    }
    let subdirs = first.scan(&top)?;
    if subdirs.is_empty() {
        return Ok(vec![first]);
    }
    let root = Arc::new(Node {
        fd: top,
        up: None,
        depth: 0,
        pending: AtomicUsize::new(subdirs.len() + 1),
    });
    let pool = Pool {
        state: Mutex::new(Shared {
            tasks: Vec::new(),
            busy: 0,
            failed: None,
        }),
        wake: Condvar::new(),
        open: AtomicUsize::new(0),
    };
    pool.push(&root, subdirs);
    finish(root, &mut first)?;
    let work = |mut v: V| -> V {
        while let Some(task) = pool.next() {
            // A panic must not leave the task counted as running: the others would wait
            // for it forever.
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.run(task, &mut v)))
                    .unwrap_or_else(|_| Err(io::Error::other("a walking thread panicked")));
            pool.done(r);
        }
        v
    };
    let mut visitors: Vec<V> = std::thread::scope(|s| {
        // A thread that cannot be made is no loss: the calling thread takes every task
        // the others leave.
        let others: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("walk".into())
                    .spawn_scoped(s, || work(make()))
                    .ok()
            })
            .collect();
        let mut vs = vec![work(first)];
        for h in others {
            match h.join() {
                Ok(v) => vs.push(v),
                // Its visitor (what it counted) is lost: the walk cannot succeed.
                Err(_) => {
                    pool.lock()
                        .failed
                        .get_or_insert_with(|| io::Error::other("a walking thread panicked"));
                }
            }
        }
        vs
    });
    drop(slot);
    let failed = pool.lock().failed.take();
    match failed {
        Some(e) => Err(e),
        None => {
            visitors.reverse();
            Ok(visitors)
        }
    }
}

/// Walks the subdirectory `name` of `parent` with `v`, then calls `v.left` for it; one
/// that vanished (or became something else) is skipped.
fn walk_below(parent: &OwnedFd, name: &CStr, v: &mut impl Visitor) -> io::Result<()> {
    match open_dir(parent, name) {
        Ok(fd) => walk(fd, v)?,
        Err(e) if vanished(e) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    v.left(parent, name)
}

/// Opens the directory `path` relative to `at` without following a symlink.
pub(crate) fn open_dir<Fd: AsFd, P: rustix::path::Arg>(
    at: Fd,
    path: P,
) -> rustix::io::Result<OwnedFd> {
    openat(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether `e` means the entry went away or is no longer a directory.
pub(crate) fn vanished(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
}
