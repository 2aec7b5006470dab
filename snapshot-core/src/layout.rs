//! Filesystem steps the shared lifecycle ([`crate::lifecycle`]) is made of: the root's
//! lock, renames that never replace, directory fsyncs, `syncfs`, deleting a tree.

use std::io;
use std::path::Path;

use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::error::{Error, Result};

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

/// Deletes a tree; one that is already gone is fine. Holds a bounded number of directories open
/// and recurses on the heap, so a tree of any depth goes (std's `remove_dir_all` keeps a
/// descriptor and a stack frame per level: a deep enough chain made by a container aborts
/// the process or exhausts its descriptors). Symlinks are deleted, never followed. A wide
/// tree is deleted by one thread per CPU (at most 4), each taking a directory of the top
/// levels or a subtree below them.
///
/// # Errors
/// The OS error of the first entry that cannot be deleted.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    use rustix::fs::{statat, unlinkat, AtFlags, FileType, CWD};
    let meta = match statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(m) => m,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
        return gone_ok(unlinkat(CWD, path, AtFlags::empty()));
    }
    match crate::walk::open_dir(CWD, path) {
        Ok(top) => {
            crate::walk::walk_parallel(top, crate::walk::walkers(), || Remover)?;
        }
        Err(e) if crate::walk::vanished(e) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    gone_ok(unlinkat(CWD, path, AtFlags::REMOVEDIR))
}

/// Deletes what a walk meets: files as it scans, directories as it leaves them.
struct Remover;

impl crate::walk::Visitor for Remover {
    fn scan(&mut self, dir: &std::os::fd::OwnedFd) -> io::Result<Vec<std::ffi::CString>> {
        use rustix::fs::{statat, unlinkat, AtFlags, Dir, FileType};
        let mut subdirs = Vec::new();
        for entry in Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(m) => FileType::from_raw_mode(m.st_mode) == FileType::Directory,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
                _ => false,
            };
            if is_dir {
                subdirs.push(name.to_owned());
            } else {
                gone_ok(unlinkat(dir, name, AtFlags::empty()))?;
            }
        }
        Ok(subdirs)
    }

    fn left(&mut self, parent: &std::os::fd::OwnedFd, name: &std::ffi::CStr) -> io::Result<()> {
        gone_ok(rustix::fs::unlinkat(
            parent,
            name,
            rustix::fs::AtFlags::REMOVEDIR,
        ))
    }
}

fn gone_ok(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        r => r.map_err(Into::into),
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
