//! Copying a snapshot's tree into a new snapshot, keeping everything a layer carries.
//!
//! [`copy_tree`] copies a directory tree into an existing empty directory and keeps, for
//! every entry: the file type, mode (setuid, setgid and sticky included), owner, access
//! and modification times to the nanosecond (directories too: they are set after the
//! directory is filled), extended attributes of every namespace the caller can read
//! (`user.*`, `trusted.*`, `security.*`, ACLs), hard links (the second and later names of
//! an inode become links to its first copy), symlinks (copied as links, never followed),
//! device nodes and fifos. Sockets are skipped with a log line: a socket file is only a
//! name, and nothing listens on a copy.
//!
//! File data is shared with `FICLONE` (a reflink: no data is copied) where the filesystem
//! supports it (btrfs, xfs with `reflink=1`, bcachefs), else copied inside the kernel with
//! `copy_file_range` (with `sendfile` as a fallback for kernels or filesystems that refuse
//! it); data never passes through a user-space buffer. Holes in sparse files are not kept
//! by the fallback.
//!
//! Every entry is reached through the descriptor of its directory (`openat`, `mkdirat`,
//! `symlinkat`, ... with single-component names and `O_NOFOLLOW`), so a symlink in the
//! source, whatever it points at (`/etc/passwd`, `../../..`), is never resolved, and
//! nothing is created outside the destination. Extended attributes of symlinks and
//! special files, which cannot be opened, are reached as `/proc/self/fd/<dir>/<name>`
//! with the `l*xattr` calls, which do not follow the last component either.
//!
//! The walk keeps two descriptors open per directory level (source and destination), so
//! the depth of a tree it can copy is bounded by the open file limit. Sources are opened
//! with `O_NOATIME` where the caller may, so a copy leaves the parent's access times alone.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use crate::error::NativeError;

/// What [`copy_tree`] did, by kind of entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Directories created (the destination root not counted).
    pub dirs: u64,
    /// Regular files created (first names of their inodes).
    pub files: u64,
    /// Files whose data was shared with `FICLONE` instead of copied.
    pub reflinked: u64,
    /// Files whose data was copied (`copy_file_range` or `sendfile`).
    pub copied: u64,
    /// Bytes copied for the files counted in `copied`.
    pub bytes_copied: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Extra names of inodes already copied, created as hard links.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub specials: u64,
    /// Sockets skipped.
    pub sockets_skipped: u64,
    /// Extended attributes written.
    pub xattrs: u64,
}

/// How many directory levels below its root a copied tree may have (Linux's own limit on
/// path length allows about 2048 levels of one-letter names).
pub const MAX_DEPTH: usize = 2048;

/// Copies the tree at `src` into the existing, empty directory `dst`, which takes the
/// mode, owner, times and extended attributes of `src` itself. See the [module
/// documentation](self) for what is kept.
///
/// # Errors
/// [`NativeError`] naming the path of the first entry that could not be read or
/// recreated, or of a directory more than [`MAX_DEPTH`] levels down; the destination is
/// then left half-filled for the caller to delete.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let src = tempfile::tempdir()?;
/// let dst = tempfile::tempdir()?;
/// std::fs::write(src.path().join("f"), b"data")?;
/// std::os::unix::fs::symlink("/etc/passwd", src.path().join("l"))?;
/// let stats = snapshot_native::copy::copy_tree(src.path(), dst.path())?;
/// assert_eq!((stats.files, stats.symlinks), (1, 1));
/// assert_eq!(std::fs::read_link(dst.path().join("l"))?, std::path::Path::new("/etc/passwd"));
/// # Ok(()) }
/// ```
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, NativeError> {
    let src_fd = open_dir_at(CWD, src).map_err(|e| NativeError::io("open directory", src, e))?;
    let dst_fd = open_dir_at(CWD, dst).map_err(|e| NativeError::io("open directory", dst, e))?;
    let stat = rfs::fstat(&src_fd).map_err(|e| NativeError::io("stat", src, e))?;
    let mut copier = Copier {
        src_root: src,
        dst_root: dst,
        dst_root_fd: dst_fd
            .try_clone()
            .map_err(|e| NativeError::io("duplicate descriptor", dst, e))?,
        links: HashMap::new(),
        reflink: true,
        stats: CopyStats::default(),
        names: Vec::new(),
        value: Vec::new(),
    };
    let entries = list_dir(&src_fd).map_err(|e| NativeError::io("read directory", src, e))?;
    let mut stack = vec![Frame {
        src: src_fd,
        dst: dst_fd,
        entries,
        rel: PathBuf::new(),
        stat,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.entries.pop() else {
            let done = stack.pop().expect("the loop holds a frame");
            copier.finish_dir(&done)?;
            continue;
        };
        if let Some(child) = copier.copy_entry(frame, &name)? {
            if stack.len() > MAX_DEPTH {
                return Err(NativeError::too_deep(src.join(&child.rel)));
            }
            stack.push(child);
        }
    }
    log::debug!(
        "copied {} to {}: {:?}",
        src.display(),
        dst.display(),
        copier.stats
    );
    Ok(copier.stats)
}

/// One directory being copied: its descriptors, the names still to copy, its path
/// relative to the roots, and its source stat (applied once it is filled).
struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    entries: Vec<CString>,
    rel: PathBuf,
    stat: Stat,
}

struct Copier<'a> {
    src_root: &'a Path,
    dst_root: &'a Path,
    dst_root_fd: OwnedFd,
    /// First copy of every multiply-linked source inode: `(dev, ino)` to its path relative
    /// to the destination root and the inode number of the copy.
    links: HashMap<(u64, u64), (PathBuf, u64)>,
    /// Cleared once the filesystem has said it cannot reflink at all.
    reflink: bool,
    stats: CopyStats,
    names: Vec<u8>,
    value: Vec<u8>,
}

/// Where an extended attribute call goes: an open descriptor, or a path for `l*xattr`.
enum XattrTarget<'f> {
    Fd(BorrowedFd<'f>),
    Path(CString),
}

impl Copier<'_> {
    /// Copies `name` of `frame`; returns the frame of a directory to descend into.
    fn copy_entry(&mut self, frame: &Frame, name: &CStr) -> Result<Option<Frame>, NativeError> {
        let rel = frame.rel.join(OsStr::from_bytes(name.to_bytes()));
        let st = rfs::statat(&frame.src, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| NativeError::io("stat", self.src_root.join(&rel), e))?;
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type != FileType::Directory
            && st.st_nlink > 1
            && self.link_to_first(frame, name, &rel, &st)?
        {
            return Ok(None);
        }
        let dst_root = self.dst_root;
        let dst_path = || dst_root.join(&rel);
        match file_type {
            FileType::Directory => {
                // Owner-only until it is filled, so a read-only source directory can
                // still be filled as a non-root user; its own mode is set at the end.
                rfs::mkdirat(&frame.dst, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| NativeError::io("create directory", dst_path(), e))?;
                let src = open_dir_at(&frame.src, name)
                    .map_err(|e| NativeError::io("open directory", self.src_root.join(&rel), e))?;
                let dst = open_dir_at(&frame.dst, name)
                    .map_err(|e| NativeError::io("open directory", dst_path(), e))?;
                let entries = list_dir(&src)
                    .map_err(|e| NativeError::io("read directory", self.src_root.join(&rel), e))?;
                self.stats.dirs += 1;
                return Ok(Some(Frame {
                    src,
                    dst,
                    entries,
                    rel,
                    stat: st,
                }));
            }
            FileType::RegularFile => self.copy_file(frame, name, &rel, &st)?,
            FileType::Symlink => {
                let target = rfs::readlinkat(&frame.src, name, Vec::new())
                    .map_err(|e| NativeError::io("read symlink", self.src_root.join(&rel), e))?;
                rfs::symlinkat(target.as_c_str(), &frame.dst, name)
                    .map_err(|e| NativeError::io("create symlink", dst_path(), e))?;
                self.stats.symlinks += 1;
                self.finish_named(frame, name, &rel, &st, false)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                rfs::mknodat(
                    &frame.dst,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    st.st_rdev,
                )
                .map_err(|e| NativeError::io("create device node or fifo", dst_path(), e))?;
                self.stats.specials += 1;
                self.finish_named(frame, name, &rel, &st, true)?;
            }
            FileType::Socket => {
                log::info!(
                    "skipping socket {}: sockets are not copied",
                    self.src_root.join(&rel).display()
                );
                self.stats.sockets_skipped += 1;
                return Ok(None);
            }
            FileType::Unknown => {
                return Err(NativeError::io(
                    "copy entry of unknown type",
                    self.src_root.join(&rel),
                    std::io::Error::from(std::io::ErrorKind::Unsupported),
                ))
            }
        }
        if st.st_nlink > 1 {
            let copy = rfs::statat(&frame.dst, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| NativeError::io("stat", dst_path(), e))?;
            self.links
                .insert((st.st_dev, st.st_ino), (rel, copy.st_ino));
        }
        Ok(None)
    }

    /// If the inode of `st` was copied already, links `name` to that copy and returns true.
    fn link_to_first(
        &mut self,
        frame: &Frame,
        name: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<bool, NativeError> {
        let Some((first, ino)) = self.links.get(&(st.st_dev, st.st_ino)) else {
            return Ok(false);
        };
        let path = self.dst_root.join(rel);
        // The first copy's path runs through directories this copy made itself, so it
        // resolves inside the destination; the inode check below confirms it.
        rfs::linkat(
            &self.dst_root_fd,
            first.as_path(),
            &frame.dst,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| NativeError::io("create hard link", &path, e))?;
        let made = rfs::statat(&frame.dst, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| NativeError::io("stat", &path, e))?;
        if made.st_ino != *ino {
            return Err(NativeError::HardLink {
                path,
                first: self.dst_root.join(first),
                source: std::io::Error::other(format!("inode {} is not {ino}", made.st_ino)),
            });
        }
        self.stats.hardlinks += 1;
        Ok(true)
    }

    fn copy_file(
        &mut self,
        frame: &Frame,
        name: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<(), NativeError> {
        let src = open_noatime(
            &frame.src,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        )
        .map_err(|e| NativeError::io("open file", self.src_root.join(rel), e))?;
        let dst_path = self.dst_root.join(rel);
        let dst = rfs::openat(
            &frame.dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| NativeError::io("create file", &dst_path, e))?;
        if st.st_size > 0 {
            self.copy_data(&src, &dst, &dst_path)?;
        }
        self.stats.files += 1;
        let owner = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        chown_checked(
            &dst_path,
            owner,
            |o, g| rfs::fchown(&dst, o, g),
            || rfs::fstat(&dst),
        )?;
        rfs::fchmod(&dst, mode_of(st)).map_err(|e| NativeError::io("chmod", &dst_path, e))?;
        self.copy_xattrs(
            XattrTarget::Fd(src.as_fd()),
            XattrTarget::Fd(dst.as_fd()),
            &dst_path,
        )?;
        rfs::futimens(&dst, &timestamps(st))
            .map_err(|e| NativeError::io("set times of", &dst_path, e))
    }

    /// Shares or copies the data of `src` into the empty `dst`.
    fn copy_data(&mut self, src: &OwnedFd, dst: &OwnedFd, path: &Path) -> Result<(), NativeError> {
        if self.reflink {
            match rfs::ioctl_ficlone(dst, src) {
                Ok(()) => {
                    self.stats.reflinked += 1;
                    return Ok(());
                }
                // The filesystem has no reflinks at all: stop asking for this tree.
                Err(Errno::OPNOTSUPP | Errno::NOTTY | Errno::NOSYS | Errno::XDEV) => {
                    self.reflink = false
                }
                // Refused for this file only (e.g. EINVAL for a btrfs nodatacow file).
                Err(e) => log::debug!(
                    "reflink of {} refused ({e}), copying its data",
                    path.display()
                ),
            }
        }
        const CHUNK: usize = 1 << 30;
        let mut total = 0u64;
        loop {
            match rfs::copy_file_range(src, None, dst, None, CHUNK) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                // Kernels and filesystems that refuse copy_file_range (before any byte was
                // written): sendfile copies inside the kernel too.
                Err(Errno::NOSYS | Errno::XDEV | Errno::OPNOTSUPP | Errno::INVAL) if total == 0 => {
                    total = sendfile_all(src, dst)
                        .map_err(|e| NativeError::io("copy data to", path, e))?;
                    break;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(NativeError::io("copy data to", path, e)),
            }
        }
        self.stats.copied += 1;
        self.stats.bytes_copied += total;
        Ok(())
    }

    /// Owner, mode (unless a symlink), extended attributes and times of an entry that
    /// cannot be opened: a symlink, device node or fifo.
    fn finish_named(
        &mut self,
        frame: &Frame,
        name: &CStr,
        rel: &Path,
        st: &Stat,
        chmod: bool,
    ) -> Result<(), NativeError> {
        let dst_path = self.dst_root.join(rel);
        let owner = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        chown_checked(
            &dst_path,
            owner,
            |o, g| rfs::chownat(&frame.dst, name, o, g, AtFlags::SYMLINK_NOFOLLOW),
            || rfs::statat(&frame.dst, name, AtFlags::SYMLINK_NOFOLLOW),
        )?;
        if chmod {
            // The name is one this copy just created with mknodat: not a symlink.
            rfs::chmodat(&frame.dst, name, mode_of(st), AtFlags::empty())
                .map_err(|e| NativeError::io("chmod", &dst_path, e))?;
        }
        self.copy_xattrs(
            XattrTarget::Path(proc_path(&frame.src, name)),
            XattrTarget::Path(proc_path(&frame.dst, name)),
            &dst_path,
        )?;
        rfs::utimensat(&frame.dst, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| NativeError::io("set times of", &dst_path, e))
    }

    /// Owner, mode, extended attributes and times of a filled directory.
    fn finish_dir(&mut self, frame: &Frame) -> Result<(), NativeError> {
        let dst_path = self.dst_root.join(&frame.rel);
        let owner = (
            Uid::from_raw(frame.stat.st_uid),
            Gid::from_raw(frame.stat.st_gid),
        );
        chown_checked(
            &dst_path,
            owner,
            |o, g| rfs::fchown(&frame.dst, o, g),
            || rfs::fstat(&frame.dst),
        )?;
        rfs::fchmod(&frame.dst, mode_of(&frame.stat))
            .map_err(|e| NativeError::io("chmod", &dst_path, e))?;
        self.copy_xattrs(
            XattrTarget::Fd(frame.src.as_fd()),
            XattrTarget::Fd(frame.dst.as_fd()),
            &dst_path,
        )?;
        rfs::futimens(&frame.dst, &timestamps(&frame.stat))
            .map_err(|e| NativeError::io("set times of", &dst_path, e))
    }

    /// Copies every extended attribute the caller can list on `src` to `dst`. Runs after
    /// chown, which clears `security.capability`.
    fn copy_xattrs(
        &mut self,
        src: XattrTarget<'_>,
        dst: XattrTarget<'_>,
        path: &Path,
    ) -> Result<(), NativeError> {
        let xerr = |op, name: &[u8], e: Errno| NativeError::Xattr {
            op,
            name: String::from_utf8_lossy(name).into_owned(),
            path: path.to_path_buf(),
            source: e.into(),
        };
        let mut names = std::mem::take(&mut self.names);
        let mut value = std::mem::take(&mut self.value);
        let result = (|| {
            match fill(&mut names, |buf| src.list(buf)) {
                Ok(()) => {}
                // A filesystem without extended attributes has none to copy.
                Err(Errno::OPNOTSUPP) => return Ok(()),
                Err(e) => return Err(xerr("list", b"", e)),
            }
            for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let cname = CString::new(name).expect("split at NUL");
                match fill(&mut value, |buf| src.get(&cname, buf)) {
                    Ok(()) => {}
                    // Removed since the listing.
                    Err(Errno::NODATA) => continue,
                    Err(e) => return Err(xerr("read", name, e)),
                }
                if let Err(e) = dst.set(&cname, &value) {
                    // Some attributes are set by the kernel when a file is created (an
                    // LSM's label); an equal value there is a copy too.
                    let mut current = Vec::new();
                    if fill(&mut current, |buf| dst.get(&cname, buf)).is_ok() && current == value {
                        continue;
                    }
                    return Err(xerr("write", name, e));
                }
                self.stats.xattrs += 1;
            }
            Ok(())
        })();
        self.names = names;
        self.value = value;
        result
    }
}

impl XattrTarget<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrTarget::Fd(fd) => rfs::flistxattr(fd, buf),
            XattrTarget::Path(p) => rfs::llistxattr(p.as_c_str(), buf),
        }
    }

    fn get(&self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrTarget::Fd(fd) => rfs::fgetxattr(fd, name, buf),
            XattrTarget::Path(p) => rfs::lgetxattr(p.as_c_str(), name, buf),
        }
    }

    fn set(&self, name: &CStr, value: &[u8]) -> rustix::io::Result<()> {
        match self {
            XattrTarget::Fd(fd) => rfs::fsetxattr(fd, name, value, XattrFlags::empty()),
            XattrTarget::Path(p) => rfs::lsetxattr(p.as_c_str(), name, value, XattrFlags::empty()),
        }
    }
}

/// Calls `read` with a buffer that grows until the result fits (`ERANGE` means the value
/// grew between the size query and the read), then truncates `buf` to the result.
fn fill(
    buf: &mut Vec<u8>,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<()> {
    let mut size = buf.capacity().max(256);
    loop {
        buf.resize(size, 0);
        match read(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(());
            }
            Err(Errno::RANGE) if size < (1 << 24) => size *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// `chown` through `set`; an EPERM is fine when the entry already has that owner (a
/// non-root copy of its own files), and is an error otherwise.
fn chown_checked(
    path: &Path,
    (uid, gid): (Uid, Gid),
    set: impl FnOnce(Option<Uid>, Option<Gid>) -> rustix::io::Result<()>,
    stat: impl FnOnce() -> rustix::io::Result<Stat>,
) -> Result<(), NativeError> {
    match set(Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(Errno::PERM) => match stat() {
            Ok(st) if st.st_uid == uid.as_raw() && st.st_gid == gid.as_raw() => Ok(()),
            _ => Err(NativeError::io("chown", path, Errno::PERM)),
        },
        Err(e) => Err(NativeError::io("chown", path, e)),
    }
}

/// `sendfile` until end of file; returns the bytes copied.
fn sendfile_all(src: &OwnedFd, dst: &OwnedFd) -> rustix::io::Result<u64> {
    let mut total = 0u64;
    loop {
        match rfs::sendfile(dst, src, None, 1 << 30) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`.
fn open_dir_at<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    name: P,
) -> rustix::io::Result<OwnedFd> {
    open_noatime(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    )
}

/// `openat` with `O_NOATIME`, so reading the parent leaves its access times as they were
/// (they are what the copy records); without it when the caller does not own the entry
/// (EPERM).
fn open_noatime<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    name: P,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    match rfs::openat(dir.as_fd(), name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// The names in a directory, without `.` and `..`.
fn list_dir(fd: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in the open directory `dir` that the
/// kernel resolves through the descriptor, for calls that take only paths.
fn proc_path(dir: &OwnedFd, name: &CStr) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).expect("a file name holds no NUL")
}

fn mode_of(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}
