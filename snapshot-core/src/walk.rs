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
